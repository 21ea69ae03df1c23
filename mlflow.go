package amlpool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// This file is batch scoring's codec for online endpoints: the MLflow
// scoring protocol, which online endpoints serving MLflow models speak
// (docs/azureml.md, "Azure ML online endpoints").
//
//	request  {"input_data": {"columns": [...], "index": [...], "data": [[...], ...]}}
//	reply    [prediction, ...]   or   {"predictions": [prediction, ...]}

// encodeOnline returns the MLflow request for rows, the rows of the input
// from index start on (the index lists their input indexes).
func encodeOnline(cols []string, start int, rows [][]any) ([]byte, error) {
	index := make([]int, len(rows))
	for i := range index {
		index[i] = start + i
	}
	type split struct {
		Columns []string `json:"columns"`
		Index   []int    `json:"index"`
		Data    [][]any  `json:"data"`
	}
	b, err := marshalNoEscape(struct {
		InputData split `json:"input_data"`
	}{split{cols, index, rows}})
	if err != nil {
		return nil, fmt.Errorf("amlpool: encode request: %w", err)
	}
	return b, nil
}

// PredictionsColumn names the one column of scores when an online
// endpoint's predictions are plain values (a number, a string) per row.
const PredictionsColumn = "predictions"

// decodeOnline reads an online endpoint's reply to an MLflow request into
// a Table with one row per prediction. The predictions must be all of one
// shape:
//
//   - plain values (numbers, strings, booleans, null): one column,
//     PredictionsColumn;
//   - arrays (class probabilities, say): columns "0", "1", …, as many as
//     the longest, a shorter array's missing cells null;
//   - objects: one column per key, in the order the first object has them,
//     keys first seen in later objects after those; a missing key is null.
//
// Numbers decode as json.Number. It returns the predictions' shape too
// (plain values for none). Every error names what was wrong and matches
// ErrMalformedResponse.
func decodeOnline(body []byte) (*Table, predShape, error) {
	t, shape, err := decodePredictions(body)
	if err != nil {
		return nil, 0, &malformedError{fmt.Errorf("amlpool: decode online reply: %w", err)}
	}
	return t, shape, nil
}

// predShape is what an online reply's predictions are, which makes its
// table's columns: a batch's replies must all be of one shape (align).
type predShape byte

const (
	plainShape  predShape = iota + 1 // plain values: one column, PredictionsColumn
	arrayShape                       // arrays: columns "0", "1", …
	objectShape                      // objects: a column per key
)

func (s predShape) String() string {
	switch s {
	case plainShape:
		return "plain values"
	case arrayShape:
		return "arrays"
	case objectShape:
		return "objects"
	}
	return "none"
}

func decodePredictions(body []byte) (*Table, predShape, error) {
	var preds []json.RawMessage
	switch firstByte(body) {
	case '[':
		if err := json.Unmarshal(body, &preds); err != nil {
			return nil, 0, jsonProblem(err)
		}
	case '{':
		var wire struct {
			Predictions json.RawMessage `json:"predictions"` // null too: RawMessage keeps it
		}
		if err := json.Unmarshal(body, &wire); err != nil {
			return nil, 0, jsonProblem(err)
		}
		switch c := firstByte(wire.Predictions); c {
		case 0:
			return nil, 0, errors.New(`an object without "predictions" (want a JSON array of predictions, or {"predictions": [...]})`)
		case '[':
			if err := json.Unmarshal(wire.Predictions, &preds); err != nil {
				return nil, 0, jsonProblem(err)
			}
		default:
			return nil, 0, fmt.Errorf(`an object whose "predictions" is a JSON %s (want a JSON array of predictions: {"predictions": [...]})`, jsonKind(c))
		}
	case 0:
		return nil, 0, errors.New("an empty body (want a JSON array of predictions)")
	default:
		return nil, 0, fmt.Errorf("a JSON %s (want an array of predictions, or {\"predictions\": [...]})", jsonKind(firstByte(body)))
	}
	t := &Table{Values: make([][]any, len(preds))}
	if len(preds) == 0 {
		t.ColumnNames = []string{PredictionsColumn}
		return t, plainShape, nil
	}
	shape := firstByte(preds[0])
	cols := map[string]int{}
	for i, raw := range preds {
		if s := firstByte(raw); (s == '[' || s == '{' || shape == '[' || shape == '{') && s != shape {
			return nil, 0, fmt.Errorf("prediction %d is a JSON %s, but prediction 0 is a JSON %s: the predictions must be of one shape", i, jsonKind(s), jsonKind(shape))
		}
		var err error
		switch shape {
		case '[':
			var cells []any
			if err = unmarshalNumbers(raw, &cells); err == nil {
				for len(t.ColumnNames) < len(cells) {
					t.ColumnNames = append(t.ColumnNames, strconv.Itoa(len(t.ColumnNames)))
				}
				t.Values[i] = cells
			}
		case '{':
			t.Values[i], err = decodeRecord(raw, &t.ColumnNames, cols)
		default:
			var v any
			if err = unmarshalNumbers(raw, &v); err == nil {
				t.Values[i] = []any{v}
			}
		}
		if err != nil {
			return nil, 0, fmt.Errorf("prediction %d: %w", i, err)
		}
	}
	kind := plainShape
	switch shape {
	case '[':
		kind = arrayShape
	case '{':
		kind = objectShape
	default:
		t.ColumnNames = []string{PredictionsColumn}
	}
	for i, row := range t.Values {
		for len(row) < len(t.ColumnNames) {
			row = append(row, nil)
		}
		t.Values[i] = row
	}
	return t, kind, nil
}

// decodeRecord reads one object prediction into a row, its keys' columns
// found in, or added to, names and cols.
func decodeRecord(raw []byte, names *[]string, cols map[string]int) ([]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // '{': raw is one valid object
		return nil, err
	}
	row := make([]any, len(*names))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		c, ok := cols[key]
		if !ok {
			c = len(*names)
			cols[key] = c
			*names = append(*names, key)
		}
		for len(row) <= c {
			row = append(row, nil)
		}
		row[c] = v // of a key given twice, the last value, as encoding/json keeps
	}
	return row, nil
}

// jsonProblem describes a reply's JSON error, with its offset.
func jsonProblem(err error) error {
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return fmt.Errorf("invalid JSON at byte offset %d: %w", se.Offset, err)
	}
	return err
}

// jsonKind names the JSON value that starts with c.
func jsonKind(c byte) string {
	switch c {
	case '[':
		return "array"
	case '{':
		return "object"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	case 0:
		return "nothing"
	}
	return "number"
}

// align puts a scored chunk of an online batch in the batch's column
// order, so that every chunk's output has the same columns: the first
// scored chunk's, then any column a later chunk adds (after the others,
// from that chunk on). A model whose predictions are objects may leave out
// keys or order them differently from one request to the next. Predictions
// of another shape than the first scored chunk's (objects after plain
// values, say) have columns of another kind: merged, they would leave the
// earlier columns empty and the sink could not tell, so the chunk fails
// instead, naming both shapes. It runs on the emitter's goroutine only.
func (b *batch) align(ch *Chunk) {
	if ch.Output == nil {
		return
	}
	if b.c.kind != Online {
		b.sameColumns(ch) // a Classic reply's columns are fixed: no aligning
		return
	}
	out := ch.Output
	if b.outCols == nil {
		b.outCols, b.shape = out.ColumnNames, ch.shape
		return
	}
	if ch.shape != b.shape {
		ch.Output, ch.Err = nil, &ChunkError{Seq: ch.Seq, FirstRow: ch.Start + 1, LastRow: ch.Start + len(ch.Input), Endpoint: ch.Endpoint,
			Err: fmt.Errorf("endpoint %s: the predictions are %s, but those of the batch's first scored rows were %s: a batch's predictions must all be of one shape", ch.Endpoint, ch.shape, b.shape)}
		return
	}
	if slices.Equal(out.ColumnNames, b.outCols) {
		return
	}
	at := make([]int, len(out.ColumnNames))
	for i, name := range out.ColumnNames {
		j := slices.Index(b.outCols, name)
		if j < 0 {
			j = len(b.outCols)
			b.outCols = append(slices.Clip(b.outCols), name)
		}
		at[i] = j
	}
	for r, row := range out.Values {
		aligned := make([]any, len(b.outCols))
		for i, v := range row {
			aligned[at[i]] = v
		}
		out.Values[r] = aligned
	}
	out.ColumnNames = b.outCols
}
