package amltest

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/amlpool/amlpool"
)

// This file is the fake's own codec for the Classic wire format: the bodies
// of a scoring request and of its reply, in its own types. amlpool's types
// appear only where Config.Score is called: a decoded request is turned into
// an *amlpool.Request, and the model's *amlpool.Response is turned into the
// reply, field by field, never through amlpool's JSON methods. The fake is
// the witness tests trust, so a bug in amlpool's codec must not be the
// fake's bug too.
//
// The forms, as the service documents and sends them:
//
//	request   {"Inputs": {"input1": TABLE}, "GlobalParameters": {...}}
//	TABLE     {"ColumnNames": [...], "Values": [[...], ...]}   classic URLs
//	          [{"column": value, ...}, ...]                   URLs with format=swagger
//	reply     {"Results": {"output1": OUTPUT}}
//	OUTPUT    {"type": "table", "value": {"ColumnNames", "ColumnTypes", "Values"}}
//	          [{"column": "value", ...}, ...]                 format=swagger

// wireRequest is a request body. Each input stays raw until its form is
// known.
type wireRequest struct {
	Inputs           map[string]json.RawMessage `json:"Inputs"`
	GlobalParameters map[string]any             `json:"GlobalParameters"`
}

// wireTable is a table in the classic form. omitzero keeps an absent list
// (a reply without details=true has no ColumnNames) apart from an empty one.
type wireTable struct {
	ColumnNames []string `json:"ColumnNames,omitzero"`
	ColumnTypes []string `json:"ColumnTypes,omitzero"`
	Values      [][]any  `json:"Values,omitzero"`
}

// wireRows is a table in the swagger form: one object per row.
type wireRows []map[string]any

// wireOutput is one output of a reply to a classic URL.
type wireOutput struct {
	Type  string    `json:"type"`
	Value wireTable `json:"value"`
}

// wireReply is a reply body: each result is a wireOutput, wireRows, or nil
// for an output the model left nil.
type wireReply struct {
	Results map[string]any `json:"Results"`
}

// decodeRequest decodes and checks a request body the way the service
// would reject it: empty, not JSON, no inputs, the wrong form for the URL, or
// rows that do not fit the column names. Numbers decode as json.Number. Of
// several bad inputs, the first by name is reported.
func decodeRequest(body []byte, swagger bool) (*amlpool.Request, *apiError) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, badRequest("BadArgument", "RequestIsEmpty", "The request body is empty.")
	}
	var w wireRequest
	if err := decodeNumbers(body, &w); err != nil {
		return nil, badRequest("BadArgument", "RequestBodyInvalid",
			"No request body provided or error in deserializing the request body. "+err.Error())
	}
	if len(w.Inputs) == 0 {
		return nil, badRequest("BadArgument", "MissingRequestInput", "The request has no Inputs.")
	}
	req := &amlpool.Request{Inputs: make(map[string]*amlpool.Table, len(w.Inputs)), GlobalParameters: w.GlobalParameters}
	for _, name := range slices.Sorted(maps.Keys(w.Inputs)) {
		t, e := decodeInput(name, w.Inputs[name], swagger)
		if e != nil {
			return nil, e
		}
		req.Inputs[name] = t
	}
	return req, nil
}

// decodeInput decodes one input table, in the form the URL asks for.
func decodeInput(name string, raw json.RawMessage, swagger bool) (*amlpool.Table, *apiError) {
	invalid := func(msg string) *apiError { return badRequest("BadArgument", "RequestBodyInvalid", msg) }
	switch first := firstByte(raw); {
	case first == 'n':
		return nil, badRequest("BadArgument", "MissingRequestInput", fmt.Sprintf("Input %q is null.", name))
	case swagger && first != '[':
		return nil, invalid(fmt.Sprintf("Input %q must be an array of row objects (format=swagger).", name))
	case swagger:
		var rows wireRows
		if err := decodeNumbers(raw, &rows); err != nil {
			return nil, invalid(fmt.Sprintf("Input %q: %v.", name, err))
		}
		return &amlpool.Table{Rows: rows}, nil
	case first != '{':
		return nil, invalid(fmt.Sprintf("Input %q must be an object with ColumnNames and Values (add format=swagger for row objects).", name))
	}
	var t wireTable
	if err := decodeNumbers(raw, &t); err != nil {
		return nil, invalid(fmt.Sprintf("Input %q: %v.", name, err))
	}
	if t.ColumnNames == nil {
		return nil, badRequest("BadUserArgument", "InputMismatchError",
			fmt.Sprintf("Input data does not match input port schema: input %q has no ColumnNames.", name))
	}
	for i, row := range t.Values {
		if len(row) != len(t.ColumnNames) {
			return nil, badRequest("BadUserArgument", "InputParseError",
				fmt.Sprintf("Input %q row %d has %d values for %d columns.", name, i, len(row), len(t.ColumnNames)))
		}
	}
	return &amlpool.Table{ColumnNames: t.ColumnNames, ColumnTypes: t.ColumnTypes, Values: t.Values}, nil
}

// encodeResponse shapes the model's reply for the URL, as the service does,
// and encodes it. With format=swagger every output is a bare array of row
// objects (classic tables are turned into rows by column name). Otherwise
// every output is {"type","value"} with a classic table ("table" when the
// model left Type empty; row objects become columns in name order), and
// without details=true ColumnNames and ColumnTypes are dropped, as in the
// service's replies to such URLs.
func encodeResponse(resp *amlpool.Response, swagger, details bool) ([]byte, error) {
	w := wireReply{Results: map[string]any{}}
	if resp != nil {
		for name, o := range resp.Results {
			if o == nil {
				w.Results[name] = nil
				continue
			}
			out, err := encodeOutput(o, swagger, details)
			if err != nil {
				return nil, fmt.Errorf("output %q: %w", name, err)
			}
			w.Results[name] = out
		}
	}
	return marshalNoEscape(w)
}

// encodeOutput returns the wire form of one output: wireRows or wireOutput.
func encodeOutput(o *amlpool.Output, swagger, details bool) (any, error) {
	t := o.Value
	rows := t.Rows != nil
	if rows && (t.ColumnNames != nil || t.ColumnTypes != nil || t.Values != nil) {
		return nil, errors.New("table has both Rows and ColumnNames, ColumnTypes or Values")
	}
	if swagger {
		if rows {
			return wireRows(t.Rows), nil
		}
		out := make(wireRows, len(t.Values))
		for i, row := range t.Values {
			if len(row) != len(t.ColumnNames) {
				return nil, fmt.Errorf("row %d has %d cells for %d column names", i, len(row), len(t.ColumnNames))
			}
			out[i] = make(map[string]any, len(row))
			for c, v := range row {
				out[i][t.ColumnNames[c]] = v
			}
		}
		return out, nil
	}
	wt := wireTable{ColumnNames: t.ColumnNames, ColumnTypes: t.ColumnTypes, Values: t.Values}
	if rows {
		wt = columns(t.Rows)
	}
	if !details {
		wt.ColumnNames, wt.ColumnTypes = nil, nil
	}
	return wireOutput{Type: cmp.Or(o.Type, "table"), Value: wt}, nil
}

// columns turns row objects into a classic table, columns in name order; a
// key a row lacks is null there.
func columns(rows []map[string]any) wireTable {
	seen := map[string]bool{}
	for _, row := range rows {
		for k := range row {
			seen[k] = true
		}
	}
	names := slices.Sorted(maps.Keys(seen))
	values := make([][]any, len(rows))
	for i, row := range rows {
		values[i] = make([]any, len(names))
		for c, n := range names {
			values[i][c] = row[n]
		}
	}
	return wireTable{ColumnNames: names, Values: values}
}

// decodeNumbers decodes exactly one JSON value from b into v, numbers as
// json.Number, and fails on anything after it.
func decodeNumbers(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("data after the JSON value at byte offset %d", dec.InputOffset())
	}
	return nil
}

// firstByte returns the first byte of b that is not JSON white space, or 0.
func firstByte(b []byte) byte {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) > 0 {
		return t[0]
	}
	return 0
}
