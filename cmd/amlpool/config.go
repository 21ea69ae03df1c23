package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/amlpool/amlpool"
)

// poolConfig is the JSON file given to score and bench with --config:
//
//	{
//	  "endpoints": [
//	    {"name": "east", "url": "https://…/execute?api-version=2.0&details=true",
//	     "apiKeyEnv": "AML_KEY_EAST", "maxConcurrentCalls": 20, "tier": 0}
//	  ],
//	  "input": "input1", "output": "output1",
//	  "inputColumns": ["age", "income"], "outputColumns": ["Scored Labels"],
//	  "globalParameters": {}, "chunkRows": 100
//	}
//
// Keys never go in the file: each endpoint names the environment variable
// that holds its key.
type poolConfig struct {
	Endpoints        []endpointConfig `json:"endpoints"`
	Input            string           `json:"input"`            // input port; default input1
	Output           string           `json:"output"`           // output port; default the reply's only one
	InputColumns     []string         `json:"inputColumns"`     // the service's input columns, checked against the header
	OutputColumns    []string         `json:"outputColumns"`    // service columns to keep; default all
	GlobalParameters map[string]any   `json:"globalParameters"` // sent with every request
	ChunkRows        int              `json:"chunkRows"`        // rows per request; default 100
}

type endpointConfig struct {
	Name               string `json:"name"`
	URL                string `json:"url"`
	APIKeyEnv          string `json:"apiKeyEnv"`
	MaxConcurrentCalls int    `json:"maxConcurrentCalls"`
	Tier               int    `json:"tier"`   // 0 first; higher tiers take only the overflow
	APIKey             any    `json:"apiKey"` // refused: keys come from the environment
}

// loadConfig reads and checks a pool file and resolves each endpoint's key
// from the environment (getenv). Errors name the file, the endpoint and the
// field, never a key.
func loadConfig(path string, getenv func(string) string) (*poolConfig, []amlpool.Endpoint, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	cfg, eps, err := parseConfig(data, getenv)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, eps, nil
}

func parseConfig(data []byte, getenv func(string) string) (*poolConfig, []amlpool.Endpoint, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var cfg poolConfig
	if err := dec.Decode(&cfg); err != nil {
		return nil, nil, jsonError(data, err)
	}
	if dec.More() {
		return nil, nil, errors.New("more than one JSON value")
	}
	if len(cfg.Endpoints) == 0 {
		return nil, nil, errors.New(`"endpoints": none given; list at least one {"name", "url", "apiKeyEnv", "maxConcurrentCalls"}`)
	}
	if cfg.ChunkRows < 0 {
		return nil, nil, fmt.Errorf(`"chunkRows": %d is negative`, cfg.ChunkRows)
	}
	eps := make([]amlpool.Endpoint, len(cfg.Endpoints))
	for i, e := range cfg.Endpoints {
		label := epLabel(i, e.Name)
		switch {
		case e.APIKey != nil:
			return nil, nil, fmt.Errorf(`%s: "apiKey": keys do not go in the file; put the key in an environment variable and name it in "apiKeyEnv"`, label)
		case e.APIKeyEnv == "":
			return nil, nil, fmt.Errorf(`%s: "apiKeyEnv": missing; name the environment variable that holds this endpoint's key`, label)
		case getenv(e.APIKeyEnv) == "":
			return nil, nil, fmt.Errorf(`%s: "apiKeyEnv": environment variable %s is not set or empty`, label, e.APIKeyEnv)
		}
		eps[i] = amlpool.Endpoint{Name: e.Name, URL: e.URL, APIKey: getenv(e.APIKeyEnv), MaxConcurrentCalls: e.MaxConcurrentCalls, Tier: e.Tier}
	}
	return &cfg, eps, nil
}

func epLabel(i int, name string) string {
	if name == "" {
		return "endpoints[" + strconv.Itoa(i) + "]"
	}
	return "endpoints[" + strconv.Itoa(i) + "] (" + name + ")"
}

// fileField maps the Endpoint fields that amlpool.New names to the file's.
var fileField = map[string]string{"URL": "url", "APIKey": "apiKeyEnv", "MaxConcurrentCalls": "maxConcurrentCalls", "Name": "name", "Tier": "tier"}

// newClient builds the Client, naming the file's fields in config errors.
func newClient(path string, cfg *poolConfig, eps []amlpool.Endpoint) (*amlpool.Client, error) {
	c, err := amlpool.New(eps)
	var ce *amlpool.ConfigError
	if errors.As(err, &ce) {
		label := ce.Endpoint
		for i, e := range cfg.Endpoints {
			if e.Name == ce.Endpoint || "endpoints["+strconv.Itoa(i)+"]" == ce.Endpoint {
				label = epLabel(i, e.Name)
			}
		}
		field := ce.Field
		if f, ok := fileField[field]; ok {
			field = f
		}
		return nil, fmt.Errorf("%s: %s: %q: %s", path, label, field, ce.Problem)
	}
	return c, err
}

// jsonError adds the line and column to a JSON decoding error.
func jsonError(data []byte, err error) error {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset - 1 // the offending byte is the last one read
	case errors.As(err, &te):
		off = te.Offset
		err = fmt.Errorf("%q: want %v, not a JSON %s", te.Field, te.Type, te.Value)
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
		return fmt.Errorf("unknown field %s (known: endpoints, input, output, inputColumns, outputColumns, globalParameters, chunkRows; per endpoint: name, url, apiKeyEnv, maxConcurrentCalls)",
			strings.TrimPrefix(msg, "json: unknown field "))
	}
	if off < 0 {
		return err
	}
	line, col := 1, 1
	for _, b := range data[:min(int(off), len(data))] {
		if b == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return fmt.Errorf("line %d, column %d: %w", line, col, err)
}
