package rows_test

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/rows"
)

// wideObject returns a JSON object with n distinct keys, "k00000" on, then
// the extra keys.
func wideObject(n int, extra ...string) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i := range n {
		fmt.Fprintf(&b, `"k%05x":0,`, i)
	}
	for _, k := range extra {
		fmt.Fprintf(&b, `%q:0,`, k)
	}
	b.Truncate(b.Len() - 1)
	b.WriteByte('}')
	return b.Bytes()
}

// wideKeys is how many keys TestJSONLWideLine's line has (2.75 MB, below
// rows.MaxRowBytes).
const wideKeys = 250_000

// hangBound is far beyond the time a line of wideKeys keys takes to parse
// (about 2.5 s under -race on 2 busy cores, 0.4 s without) and far below the
// time it took while a duplicate key was looked for by comparing each key
// with every earlier one (85 s without -race). It catches that hang, not a
// slowdown; BenchmarkJSONLWideLine shows the time per key.
const hangBound = 30 * time.Second

// TestJSONLWideLine: a line with a quarter of a million keys, the last a
// duplicate of the first, is read in time linear in its length, and the
// duplicate is found.
func TestJSONLWideLine(t *testing.T) {
	line := wideObject(wideKeys, "k00000")
	require.Less(t, len(line), rows.MaxRowBytes)
	done := make(chan error, 1)
	go func() {
		_, err := rows.NewReader(rows.JSONL, bytes.NewReader(line))
		done <- err
	}()
	tm := time.NewTimer(hangBound)
	defer tm.Stop()
	select {
	case err := <-done:
		require.Error(t, err)
		assert.Contains(t, err.Error(), `key "k00000" appears twice`)
	case <-tm.C:
		t.Fatalf("still parsing a line of %d keys after %v: time super-linear in the number of keys?", wideKeys, hangBound)
	}
}

// TestJSONLDuplicateKeyAfterManyKeys: a duplicate key at the end of a long
// object is found wherever a JSON Lines line is parsed.
func TestJSONLDuplicateKeyAfterManyKeys(t *testing.T) {
	dup := wideObject(2000, "k00000")
	t.Run("header", func(t *testing.T) {
		_, err := rows.NewReader(rows.JSONL, bytes.NewReader(dup))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `line 1: the first row, which names the columns: key "k00000" appears twice`)
	})
	t.Run("row", func(t *testing.T) {
		r, err := rows.NewReader(rows.JSONL, bytes.NewReader(append([]byte("{\"a\":1}\n"), dup...)))
		require.NoError(t, err)
		_, err = r.Next()
		require.NoError(t, err)
		_, err = r.Next()
		var re *amlpool.RowError
		require.True(t, errors.As(err, &re), "error %v", err)
		assert.Equal(t, 2, re.Line)
		assert.Contains(t, err.Error(), `key "k00000" appears twice`)
	})
	t.Run("Scan", func(t *testing.T) {
		file := append(append([]byte("{\"a\":1}\n"), dup...), "\n{\"a\":2}\n"...)
		_, _, _, err := rows.Scan(rows.JSONL, bytes.NewReader(file), int64(len(file)))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `line 2: key "k00000" appears twice`)
	})
}

// BenchmarkJSONLWideLine reads a line of n keys as a header. Its ns/key
// stays level (1.3 to 2.3 µs on 2 shared cores) as n grows 100-fold, because
// parsing is linear in the line's length. While duplicate keys were looked
// for by comparing each key with every earlier one it grew with n: 4.9, 17
// and 137 µs per key at 1,000, 10,000 and 100,000 keys (13.7 s for the
// last line).
//
//	go test -run '^$' -bench JSONLWideLine ./rows
func BenchmarkJSONLWideLine(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		line := wideObject(n)
		b.Run("keys="+strconv.Itoa(n), func(b *testing.B) {
			b.SetBytes(int64(len(line)))
			for b.Loop() {
				if _, err := rows.NewReader(rows.JSONL, bytes.NewReader(line)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/key")
		})
	}
}
