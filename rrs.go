package amlpool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// This file holds the Azure ML Classic Request-Response Service (RRS) bodies
// (docs/azureml.md) and their codec. Decoding is tolerant of what real
// services and old docs vary on (missing ColumnNames/ColumnTypes, "table" or
// "DataTable", unknown fields, null cells, either output form) and strict
// where a caller would otherwise lose data without noticing (rows whose cell
// count disagrees with ColumnNames, a body without Results, broken JSON).

// Request is the body of a classic RRS scoring call:
//
//	{"Inputs": {"input1": {...}}, "GlobalParameters": {...}}
//
// Inputs maps each input port name (usually "input1") to its table. Every
// table must have the same form: classic (ColumnNames + Values) for the usual
// URL, row objects (Table.Rows) for a URL with format=swagger.
// GlobalParameters holds the web service parameters; it is always sent, as {}
// when nil, because generated clients always send it.
//
// The zero Request marshals as {"Inputs":{},"GlobalParameters":{}}, which the
// service rejects for lack of input. A Request is plain data: it is safe to
// read from several goroutines, but not to change while a call uses it.
type Request struct {
	Inputs           map[string]*Table `json:"Inputs"`
	GlobalParameters map[string]any    `json:"GlobalParameters"`
}

// MarshalJSON encodes r with nil Inputs and nil GlobalParameters as {}.
func (r Request) MarshalJSON() ([]byte, error) {
	type wire Request // drops the methods, so no recursion
	w := wire(r)
	if w.Inputs == nil {
		w.Inputs = map[string]*Table{}
	}
	if w.GlobalParameters == nil {
		w.GlobalParameters = map[string]any{}
	}
	return marshalNoEscape(w)
}

// Table is one input or output table, in either of the two wire forms:
//
//   - classic: {"ColumnNames": [...], "ColumnTypes": [...], "Values": [[...], ...]};
//   - swagger (URLs with format=swagger): an array of row objects
//     [{"column": "value", ...}, ...], held in Rows.
//
// In the classic form each row of Values has one cell per column name when
// ColumnNames is present. ColumnTypes ("String", "Double", "Int32", …) comes
// only in replies to URLs with details=true; without details the service
// omits ColumnNames too. Decoded cells are string, json.Number (so large
// integers keep their precision), bool or nil for a JSON null; cells a caller
// sets may be any value encoding/json can marshal.
//
// A nil slice is absent on the wire and an empty one is [], so a decoded
// Table re-encodes to the same value. Rows is used only when ColumnNames,
// ColumnTypes and Values are all nil: a Table with both forms cannot be
// marshalled. The zero Table is a classic table with no columns and no rows;
// it marshals as {}.
type Table struct {
	ColumnNames []string
	ColumnTypes []string
	Values      [][]any
	Rows        []map[string]any
}

// NumRows returns the number of rows: len(Values) for a classic table,
// len(Rows) for a swagger one, 0 for a nil or zero Table.
func (t *Table) NumRows() int {
	if t == nil {
		return 0
	}
	if t.Values == nil {
		return len(t.Rows)
	}
	return len(t.Values)
}

// Column returns the index of the column called name in ColumnNames, or -1
// when there is none (always for a nil Table, a swagger Table and a reply
// without details=true, which carry no column list).
func (t *Table) Column(name string) int {
	if t == nil {
		return -1
	}
	return slices.Index(t.ColumnNames, name)
}

// classicTable is the wire form of a classic Table: omitzero keeps an
// empty-but-present slice distinct from an absent one.
type classicTable struct {
	ColumnNames []string `json:"ColumnNames,omitzero"`
	ColumnTypes []string `json:"ColumnTypes,omitzero"`
	Values      [][]any  `json:"Values,omitzero"`
}

// isRows reports whether t is in the swagger (row objects) form.
func (t *Table) isRows() bool {
	return t.Rows != nil && t.ColumnNames == nil && t.ColumnTypes == nil && t.Values == nil
}

// MarshalJSON encodes t as an array of row objects when it is in the swagger
// form, as a classic object otherwise. It fails for a Table that has Rows and
// also ColumnNames, ColumnTypes or Values, rather than drop either.
func (t Table) MarshalJSON() ([]byte, error) {
	if t.isRows() {
		return marshalNoEscape(t.Rows)
	}
	if t.Rows != nil {
		return nil, errBothForms
	}
	return marshalNoEscape(classicTable{t.ColumnNames, t.ColumnTypes, t.Values})
}

var errBothForms = errors.New("amlpool: table has both Rows and ColumnNames, ColumnTypes or Values")

// UnmarshalJSON decodes either wire form into t, numbers as json.Number. A
// JSON null leaves t unchanged, as encoding/json does for other types.
// UnmarshalJSON does not check row widths; decodeResponse does.
func (t *Table) UnmarshalJSON(b []byte) error {
	switch firstByte(b) {
	case 'n':
		return nil
	case '[':
		var rows []map[string]any
		if err := unmarshalNumbers(b, &rows); err != nil {
			return err
		}
		*t = Table{Rows: rows}
		return nil
	case '{':
		var c classicTable
		if err := unmarshalNumbers(b, &c); err != nil {
			return err
		}
		*t = Table{ColumnNames: c.ColumnNames, ColumnTypes: c.ColumnTypes, Values: c.Values}
		return nil
	}
	return fmt.Errorf("amlpool: a table must be a JSON object or array, not %.20s", b)
}

// Response is the body of a successful classic RRS reply:
//
//	{"Results": {"output1": {"type": "table", "value": {...}}}}
//
// Results maps each output port name to its output; a JSON null output
// decodes as a nil *Output. Top-level fields other than Results
// (GlobalParameters in an old doc sample, ExecutionDurationMs, …) are
// ignored. The zero Response has no outputs.
type Response struct {
	Results map[string]*Output `json:"Results"`
}

// Output is one output port of a Response. Replies to classic URLs wrap the
// table as {"type": "table", "value": {...}} (Type "table"; the 2016 doc shows
// "DataTable"); replies to format=swagger URLs are a bare array of row
// objects, decoded as Type "" and Value.Rows. The zero Output is an untyped
// empty classic table.
type Output struct {
	Type  string
	Value Table
}

// classicOutput is the wire form of a classic Output.
type classicOutput struct {
	Type  string `json:"type,omitempty"`
	Value Table  `json:"value"`
}

// MarshalJSON encodes o as a bare array when it has no Type and its Value is
// in the swagger form, as {"type": …, "value": …} otherwise.
func (o Output) MarshalJSON() ([]byte, error) {
	if o.Type == "" && o.Value.isRows() {
		return o.Value.MarshalJSON()
	}
	return marshalNoEscape(classicOutput(o))
}

// UnmarshalJSON decodes either output form into o. A JSON null leaves o
// unchanged.
func (o *Output) UnmarshalJSON(b []byte) error {
	switch firstByte(b) {
	case 'n':
		return nil
	case '[':
		var t Table
		if err := t.UnmarshalJSON(b); err != nil {
			return err
		}
		*o = Output{Value: t}
		return nil
	case '{':
		var c classicOutput
		if err := json.Unmarshal(b, &c); err != nil {
			return err
		}
		*o = Output(c)
		return nil
	}
	return fmt.Errorf("amlpool: an output must be a JSON object or array, not %.20s", b)
}

// encodeRequest returns the JSON body for r. It fails, naming the input and
// the row, where the service would get something other than what the caller
// meant: a nil request or input, a Table with both forms, or a row whose cell
// count differs from ColumnNames.
func encodeRequest(r *Request) ([]byte, error) {
	if r == nil {
		return nil, errors.New("amlpool: encode request: nil Request")
	}
	for _, name := range slices.Sorted(maps.Keys(r.Inputs)) {
		t := r.Inputs[name]
		if t == nil {
			return nil, fmt.Errorf("amlpool: encode request: input %q is nil", name)
		}
		if err := t.checkShape(); err != nil {
			return nil, fmt.Errorf("amlpool: encode request: input %q: %w", name, err)
		}
	}
	b, err := r.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("amlpool: encode request: %w", err)
	}
	return b, nil
}

// decodeResponse decodes a successful reply body. Invalid JSON is an error
// naming the byte offset, a body without Results is an error, and so is an
// output table whose rows do not each have one cell per column name (the
// error names the output and the row).
//
// Every error it returns matches ErrMalformedResponse.
func decodeResponse(body []byte) (*Response, error) {
	resp, err := decodeResults(body)
	if err != nil {
		return nil, &malformedError{err}
	}
	return resp, nil
}

// decodeBatchResponse is decodeResponse for batch scoring, which knows how
// many rows each table should hold and never changes body after: the fast
// path sizes the tables for them, and its strings share body's bytes.
func decodeBatchResponse(body []byte, rows int) (*Response, error) {
	s := newScannerOwned(body)
	s.want = rows
	resp, err := decodeResultsWith(body, s)
	if err != nil {
		return nil, &malformedError{err}
	}
	return resp, nil
}

// decodeResults is decodeResponse without the ErrMalformedResponse mark.
// The fast path (jsonscan.go) decodes the usual reply; what it declines,
// encoding/json decodes and words the errors of.
func decodeResults(body []byte) (*Response, error) {
	return decodeResultsWith(body, newScanner(body))
}

// decodeResultsWith is decodeResults with the fast path's scanner s of body.
func decodeResultsWith(body []byte, s *scanner) (*Response, error) {
	resp, ok := scanResultsWith(s)
	if !ok {
		return decodeResultsStd(body)
	}
	// As decodeResultsStd, sorted, so that of several bad outputs the same
	// one is always named.
	for _, name := range slices.Sorted(maps.Keys(resp.Results)) {
		if out := resp.Results[name]; out != nil {
			if err := out.Value.checkShape(); err != nil {
				return nil, fmt.Errorf("amlpool: decode response: output %q: %w", name, err)
			}
		}
	}
	return resp, nil
}

// decodeResultsStd is decodeResults with encoding/json.
func decodeResultsStd(body []byte) (*Response, error) {
	var wire struct {
		Results map[string]json.RawMessage `json:"Results"`
	}
	if err := json.Unmarshal(body, &wire); err != nil {
		if se, ok := errors.AsType[*json.SyntaxError](err); ok {
			return nil, fmt.Errorf("amlpool: decode response: invalid JSON at byte offset %d: %w", se.Offset, err)
		}
		return nil, fmt.Errorf("amlpool: decode response: %w", err)
	}
	if wire.Results == nil {
		return nil, errors.New(`amlpool: decode response: no "Results" in the body`)
	}
	resp := &Response{Results: make(map[string]*Output, len(wire.Results))}
	// Sorted, so that of several bad outputs the same one is always named.
	for _, name := range slices.Sorted(maps.Keys(wire.Results)) {
		raw := wire.Results[name]
		if firstByte(raw) == 'n' {
			resp.Results[name] = nil
			continue
		}
		out := new(Output)
		if err := out.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("amlpool: decode response: output %q: %w", name, err)
		}
		if err := out.Value.checkShape(); err != nil {
			return nil, fmt.Errorf("amlpool: decode response: output %q: %w", name, err)
		}
		resp.Results[name] = out
	}
	return resp, nil
}

// shapeError reports a classic row whose cell count differs from the number
// of column names or, in a table without them, from the first row's.
type shapeError struct {
	Row     int  // index in Values
	Cells   int  // cells in that row
	Want    int  // len(ColumnNames), or without them len(Values[0])
	Unnamed bool // the table has no ColumnNames
}

func (e *shapeError) Error() string {
	if e.Unnamed {
		return fmt.Sprintf("row %d (Values[%d]) has %d cells, want %d (as many as row 1: the table names no columns)", e.Row+1, e.Row, e.Cells, e.Want)
	}
	return fmt.Sprintf("row %d (Values[%d]) has %d cells, want %d (one per column name)", e.Row+1, e.Row, e.Cells, e.Want)
}

// checkShape returns errBothForms or a *shapeError when t cannot be sent or
// read without losing data.
func (t *Table) checkShape() error {
	if t.Rows != nil && !t.isRows() {
		return errBothForms
	}
	if t.ColumnNames == nil {
		return nil
	}
	for i, row := range t.Values {
		if len(row) != len(t.ColumnNames) {
			return &shapeError{Row: i, Cells: len(row), Want: len(t.ColumnNames)}
		}
	}
	return nil
}

// checkUnnamedWidths returns a *shapeError when t has no ColumnNames and
// a row of Values is not as wide as the first. checkShape lets such a
// table pass (a reply without details=true names no columns, and Score
// hands it over as it came), but batch scoring reads its cells by place.
func (t *Table) checkUnnamedWidths() error {
	if t.ColumnNames != nil || len(t.Values) == 0 {
		return nil
	}
	for i, row := range t.Values {
		if len(row) != len(t.Values[0]) {
			return &shapeError{Row: i, Cells: len(row), Want: len(t.Values[0]), Unnamed: true}
		}
	}
	return nil
}

// unmarshalNumbers decodes one JSON value from b into v with UseNumber.
// b comes from encoding/json, which has already checked that it is exactly one
// valid value.
func unmarshalNumbers(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(v)
}

// marshalNoEscape is json.Marshal without HTML escaping (">50K" stays as it
// is) and without the Encoder's trailing newline. An outer json.Marshal still
// escapes, as it would any value.
func marshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// firstByte returns the first non-space byte of b, or 0.
func firstByte(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c
	}
	return 0
}
