package amltest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/rows"
)

// ScoredProbabilities is the column Echo adds to every row.
const ScoredProbabilities = "Scored Probabilities"

// Echo is the default model. It returns each input table as an output
// table, with the column "Scored Probabilities" added: inputs taken in order
// of name length, then name ("input1" … "input10"), give "output1",
// "output2", …. Cells become strings, as the service sends them (null stays
// null; true is "true"), and the added cell is a number in [0, 1) that
// depends only on the row's cells, printed with 15 significant digits, so
// replies are repeatable. ColumnTypes are inferred from the first non-null
// cell of each column: "String", "Boolean", "Int32", "Int64" or "Double",
// and "Double" for the added column.
//
// Echo is safe for concurrent use and does not change in. Use it inside a
// custom Config.Score to fail some calls and echo the rest.
func Echo(in *amlpool.Request) (*amlpool.Response, error) {
	names := slices.SortedFunc(maps.Keys(in.Inputs), func(a, b string) int {
		return cmp.Or(cmp.Compare(len(a), len(b)), strings.Compare(a, b))
	})
	resp := &amlpool.Response{Results: make(map[string]*amlpool.Output, len(names))}
	for i, name := range names {
		t := in.Inputs[name]
		if t == nil {
			return nil, fmt.Errorf("input %q is null", name)
		}
		resp.Results["output"+strconv.Itoa(i+1)] = &amlpool.Output{Type: "table", Value: echoTable(t)}
	}
	return resp, nil
}

func echoTable(t *amlpool.Table) amlpool.Table {
	if isRows(t) {
		rows := make([]map[string]any, len(t.Rows))
		for i, row := range t.Rows {
			out := make(map[string]any, len(row)+1)
			for k, v := range row {
				out[k] = stringCell(v)
			}
			keys := slices.Sorted(maps.Keys(row))
			cells := make([]any, len(keys))
			for j, k := range keys {
				cells[j] = k + "=" + cellText(row[k])
			}
			out[ScoredProbabilities] = probability(cells)
			rows[i] = out
		}
		return amlpool.Table{Rows: rows}
	}
	out := amlpool.Table{Values: make([][]any, len(t.Values))}
	if t.ColumnNames != nil { // without names, the rows stay unnamed
		out.ColumnNames = append(slices.Clip(t.ColumnNames), ScoredProbabilities)
		out.ColumnTypes = make([]string, 0, len(t.ColumnNames)+1)
		for c := range t.ColumnNames {
			out.ColumnTypes = append(out.ColumnTypes, columnType(t.Values, c))
		}
		out.ColumnTypes = append(out.ColumnTypes, "Double")
	}
	for i, row := range t.Values {
		cells := make([]any, 0, len(row)+1)
		for _, v := range row {
			cells = append(cells, stringCell(v))
		}
		out.Values[i] = append(cells, probability(row))
	}
	return out
}

// probability maps a row to a repeatable number in [0, 1).
func probability(cells []any) string {
	h := fnv.New64a()
	for _, v := range cells {
		h.Write([]byte(cellText(v)))
		h.Write([]byte{0})
	}
	p := float64(h.Sum64()>>11) / (1 << 53)
	return strconv.FormatFloat(p, 'g', 15, 64)
}

// stringCell is a cell as the service sends it: a string, or nil.
func stringCell(v any) any {
	if v == nil {
		return nil
	}
	return cellText(v)
}

// cellText is a cell as text, the way the command's CSV output writes it.
func cellText(v any) string { return rows.Text(v) }

// columnType infers a column's type from its first non-null cell.
func columnType(values [][]any, c int) string {
	for _, row := range values {
		if c >= len(row) || row[c] == nil {
			continue
		}
		switch v := row[c].(type) {
		case bool:
			return "Boolean"
		case json.Number:
			if n, err := v.Int64(); err == nil {
				if n >= math.MinInt32 && n <= math.MaxInt32 {
					return "Int32"
				}
				return "Int64"
			}
			return "Double"
		case float32, float64:
			return "Double"
		case int, int8, int16, int32, uint8, uint16:
			return "Int32"
		case int64, uint, uint32, uint64:
			return "Int64"
		}
		return "String"
	}
	return "String"
}

// isRows reports whether t is in the swagger (row objects) form.
func isRows(t *amlpool.Table) bool {
	return t.Rows != nil && t.ColumnNames == nil && t.ColumnTypes == nil && t.Values == nil
}
