package rows_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/rows"
)

// TestCSVCellsAreOrdinaryStrings checks that a CSV row's cells, which the
// reader boxes without a copy, are strings in every way a caller can look
// at them: a type switch, ==, reflect, fmt and encoding/json, and still
// after the reader and everything else but the rows is collected.
func TestCSVCellsAreOrdinaryStrings(t *testing.T) {
	const n = 3000 // several of the reader's slabs
	var b strings.Builder
	b.WriteString("id,name\n")
	for i := range n {
		fmt.Fprintf(&b, "%d,\"name, %d\"\n", i, i)
	}
	r, err := rows.NewCSVReader(strings.NewReader(b.String()))
	require.NoError(t, err)
	var got [][]any
	for {
		row, err := r.Next()
		if err != nil {
			break
		}
		got = append(got, row)
	}
	require.Len(t, got, n)
	r = nil
	runtime.GC()
	runtime.GC()
	for i, row := range got {
		id, name := fmt.Sprint(i), fmt.Sprintf("name, %d", i)
		s, ok := row[0].(string)
		require.True(t, ok, "row %d: cell is %T", i, row[0])
		require.Equal(t, id, s)
		require.True(t, row[1] == any(name), "row %d: %q == %q", i, row[1], name)
		require.Equal(t, reflect.TypeFor[string](), reflect.TypeOf(row[1]))
		require.Equal(t, name, reflect.ValueOf(row[1]).String())
		switch v := row[1].(type) {
		case string:
			require.Equal(t, name, v)
		default:
			t.Fatalf("row %d: type switch took %T", i, v)
		}
		j, err := json.Marshal(row)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("[%q,%q]", id, name), string(j))
		m := map[any]int{row[0]: 1}
		require.Equal(t, 1, m[id], "row %d: as a map key", i)
	}
	runtime.KeepAlive(r)
}

// TestCSVRowsAllocateLittle checks that reading a CSV row costs about one
// allocation (encoding/csv's string of the record), not one a cell more
// for boxing each into an any.
func TestCSVRowsAllocateLittle(t *testing.T) {
	const n = 10_000
	var b strings.Builder
	b.WriteString("a,b,c,d\n")
	for i := range n {
		fmt.Fprintf(&b, "%d,b%d,c%d,d%d\n", i, i, i, i)
	}
	data := b.String()
	allocs := testing.AllocsPerRun(3, func() {
		r, err := rows.NewCSVReader(strings.NewReader(data))
		if err != nil {
			panic(err)
		}
		for {
			if _, err := r.Next(); err != nil {
				break
			}
		}
	})
	assert.Less(t, allocs/n, 1.2, "allocations a row of 4 cells")
}
