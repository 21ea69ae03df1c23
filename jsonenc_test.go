package amlpool

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slowChunk encodes a chunk as the fast path's fallbacks do.
func slowChunk(e *chunkEncoder, start int, rows [][]any) ([]byte, error) {
	if e.online {
		return encodeOnline(e.cols, start, rows)
	}
	return encodeRequest(&Request{Inputs: map[string]*Table{e.input: {ColumnNames: e.cols, Values: rows}}, GlobalParameters: e.global})
}

// fuzzCells makes cells of many types from a fuzz input; kinds picks them.
func fuzzCells(kinds uint64, n int, s1, s2 string, f float64, i int64, num string) []any {
	pool := []any{s1, s2, f, i, int(i), int32(i), json.Number(num), i%2 == 0, nil,
		[]any{s1, f}, map[string]any{s1: num}, float32(f), uint8(i), s1 + "\u2028" + s2}
	row := make([]any, n)
	for k := range row {
		row[k] = pool[kinds%uint64(len(pool))]
		kinds /= uint64(len(pool))
	}
	return row
}

// FuzzEncodeChunkFast checks the fast path of batch encoding against
// encodeRequest and encodeOnline: the same bytes, or both an error.
func FuzzEncodeChunkFast(f *testing.F) {
	f.Add(uint64(0), uint8(2), "a", "b", 1.5, int64(7), "12", false, "input1", "")
	f.Add(uint64(123456789), uint8(3), "é\"\\\n\x01<>&", "\xff\xfe", 1e-7, int64(-3), "-0.5e+10", true, "in\"1", "x")
	f.Add(uint64(987654321), uint8(4), "\u2029\t", "", 1e21, int64(1<<62), "01", false, "input1", "seed")
	f.Add(uint64(5), uint8(1), "x", "y", math.NaN(), int64(0), "", false, "input1", "")
	f.Add(uint64(6), uint8(1), "x", "y", 0.0, int64(0), "", true, "input1", "")
	f.Add(uint64(2), uint8(2), "x", "y", -1e-300, int64(0), "1.", false, "input1", "")
	f.Fuzz(func(t *testing.T, kinds uint64, ncols uint8, s1, s2 string, fl float64, in int64, num string, online bool, port, param string) {
		n := int(ncols%4) + 1
		cols := []string{s1, s2, "c", "d"}[:n]
		var global map[string]any
		if param != "" {
			global = map[string]any{param: fl, "s": s2}
		}
		e := newChunkEncoder(online, port, cols, global)
		rows := [][]any{fuzzCells(kinds, n, s1, s2, fl, in, num), fuzzCells(kinds>>7, n, s2, s1, -fl, in+1, num), fuzzCells(kinds>>13, n, s1, s1, fl*3, in/2, num)}
		if kinds%11 == 0 {
			rows[1] = rows[1][:n-1] // a short row
		}
		if kinds%13 == 0 {
			rows[2] = nil
		}
		start := int(in % 1000)
		got, err := e.encode(start, rows)
		want, wantErr := slowChunk(e, start, rows)
		if wantErr != nil {
			require.EqualError(t, err, wantErr.Error())
			return
		}
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	})
}

// TestEncodeChunkFastTakes checks that the fast path writes the usual
// chunks itself (FuzzEncodeChunkFast would not notice it leaving them all to
// the slow path), and what it leaves.
func TestEncodeChunkFastTakes(t *testing.T) {
	rows := [][]any{{"0", "é \"x\"\n"}, {json.Number("1.5"), nil}, {true, 2.5}, {int64(3), 1e-9}}
	for _, online := range []bool{false, true} {
		e := newChunkEncoder(online, "input1", []string{"id", "name"}, map[string]any{"seed": 1})
		got, ok := e.fast(10, rows)
		require.True(t, ok, "online %t", online)
		want, err := slowChunk(e, 10, rows)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(got))
	}
	e := newChunkEncoder(false, "input1", []string{"id", "name"}, nil)
	for _, row := range [][]any{{"0"}, {math.NaN(), "x"}, {json.Number("x"), "y"}, {make(chan int), "z"}} {
		_, ok := e.fast(0, [][]any{row})
		assert.False(t, ok, "%v: taken", row)
	}
	_, ok := e.fast(0, [][]any{nil})
	assert.False(t, ok, "a nil classic row: taken")
	_, ok = newChunkEncoder(false, "input1", []string{"id"}, map[string]any{"x": math.Inf(1)}).fast(0, [][]any{{"1"}})
	assert.False(t, ok, "global parameters that do not encode: taken")
}
