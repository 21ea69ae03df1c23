package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/amlpool/amlpool"
)

// poolConfig is the JSON file given to score and bench with --config:
//
//	{
//	  "endpoints": [
//	    {"name": "east", "url": "https://…/execute?api-version=2.0&details=true",
//	     "apiKeyEnv": "AML_KEY_EAST", "maxConcurrentCalls": 20, "tier": 0},
//	    {"name": "west", "url": "https://…", "apiKeyFile": "/run/secrets/west",
//	     "secondaryKeyFile": "/run/secrets/west2", "tier": 1}
//	  ],
//	  "input": "input1", "output": "output1",
//	  "inputColumns": ["age", "income"], "outputColumns": ["Scored Labels"],
//	  "globalParameters": {}, "chunkRows": 100
//	}
//
// Keys never go in the file: each endpoint names the environment variable
// or the file that holds its key, and may name its second key the same
// way. A key file is read again when amlpool score reloads the config
// (SIGHUP), so a rotated key can be put in place while a run goes on. An
// online endpoint ("kind": "online", whose "maxConcurrentCalls" is
// required) may take a token instead, from "tokenEnv", "tokenFile" or
// "tokenCommand" (token.go), and "header" adds request headers, such as the
// deployment to pin:
//
//	{"name": "blue", "url": "https://churn.westeurope.inference.ml.azure.com/score",
//	 "kind": "online", "maxConcurrentCalls": 24, "tokenFile": "/run/aml/token",
//	 "header": {"azureml-model-deployment": "blue"}}
//
// Batch scoring of online endpoints sends the MLflow input_data form;
// "input", "output" and "globalParameters" are then unused.
//
// A key given twice in one object is refused (duplicateKey), not taken
// last-one-wins as encoding/json would.
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
	Name               string            `json:"name"`
	URL                string            `json:"url"`
	APIKeyEnv          string            `json:"apiKeyEnv"`
	APIKeyFile         string            `json:"apiKeyFile"`
	SecondaryKeyEnv    string            `json:"secondaryKeyEnv"`
	SecondaryKeyFile   string            `json:"secondaryKeyFile"`
	MaxConcurrentCalls int               `json:"maxConcurrentCalls"`
	Tier               int               `json:"tier"`         // 0 first; higher tiers take only the overflow
	Kind               string            `json:"kind"`         // "classic" (default) or "online"; a string here, so that an error names the field
	Header             map[string]string `json:"header"`       // extra request headers
	TokenEnv           string            `json:"tokenEnv"`     // a token in this environment variable
	TokenFile          string            `json:"tokenFile"`    // a token in this file, read again when it changes
	TokenCommand       []string          `json:"tokenCommand"` // a command that prints a token
	TokenTTL           string            `json:"tokenTTL"`     // how long a command's token is used before the command runs again; default 10m (a JWT's exp may cut it short)
	APIKey             any               `json:"apiKey"`       // refused: keys come from the environment or a file
	Token              any               `json:"token"`        // refused: tokens too
}

// keySource is where a config's keys come from: environment variables and
// files.
type keySource struct {
	getenv   func(string) string
	readFile func(string) ([]byte, error)
}

// osKeys reads the process's environment and files.
var osKeys = keySource{getenv: os.Getenv, readFile: os.ReadFile}

// loadConfig reads and checks a pool file and resolves each endpoint's
// keys. Errors name the file, the endpoint and the field, never a key.
func loadConfig(path string, keys keySource) (*poolConfig, []amlpool.Endpoint, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("--config: %w", err)
	}
	cfg, eps, err := parseConfig(data, keys)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, eps, nil
}

func parseConfig(data []byte, keys keySource) (*poolConfig, []amlpool.Endpoint, error) {
	if err := duplicateKey(data); err != nil {
		return nil, nil, err
	}
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
	for _, f := range []struct {
		name string
		cols []string
	}{{"inputColumns", cfg.InputColumns}, {"outputColumns", cfg.OutputColumns}} {
		if err := checkColumnList(f.cols); err != nil {
			return nil, nil, fmt.Errorf("%q: %w", f.name, err)
		}
	}
	eps := make([]amlpool.Endpoint, len(cfg.Endpoints))
	for i, e := range cfg.Endpoints {
		label := epLabel(i, e.Name)
		var kind amlpool.Kind
		if kind.UnmarshalText([]byte(e.Kind)) != nil {
			return nil, nil, fmt.Errorf(`%s: "kind": %q: want "classic" or "online"`, label, e.Kind)
		}
		cred, err := e.credential(label, keys)
		if err != nil {
			return nil, nil, err
		}
		eps[i] = amlpool.Endpoint{Name: e.Name, URL: e.URL, MaxConcurrentCalls: e.MaxConcurrentCalls, Kind: kind, Credential: cred, Tier: e.Tier}
		if cred == nil {
			if eps[i].APIKey, err = keys.resolve("apiKey", e.APIKeyEnv, e.APIKeyFile, true); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", label, err)
			}
		}
		if eps[i].SecondaryKey, err = keys.resolve("secondaryKey", e.SecondaryKeyEnv, e.SecondaryKeyFile, false); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", label, err)
		}
		if e.Header != nil {
			eps[i].Header = make(http.Header, len(e.Header))
			for k, v := range e.Header {
				canon := http.CanonicalHeaderKey(k)
				if strings.TrimSpace(v) == "" {
					return nil, nil, fmt.Errorf(`%s: "header": %q has an empty value; give its value, or leave the header out`, label, k)
				}
				if _, dup := eps[i].Header[canon]; dup {
					return nil, nil, fmt.Errorf(`%s: "header": %s given twice, in different cases`, label, canon)
				}
				eps[i].Header[canon] = []string{v}
			}
		}
	}
	return &cfg, eps, nil
}

// keyFiles are the files the config names for keys and tokens, each
// named by its field, endpoint and the config's path.
func (c *poolConfig) keyFiles(path string) []runFile {
	var files []runFile
	for i, e := range c.Endpoints {
		for _, f := range []struct{ field, path, what string }{
			{"apiKeyFile", e.APIKeyFile, "key file"}, {"secondaryKeyFile", e.SecondaryKeyFile, "key file"}, {"tokenFile", e.TokenFile, "token file"}} {
			if f.path != "" {
				files = append(files, runFile{fmt.Sprintf("the %q of %s in %s,", f.field, epLabel(i, e.Name), path), f.path, f.what})
			}
		}
	}
	return files
}

// resolve reads the key that an endpoint's "<field>Env" or "<field>File"
// names; exactly one of them for a required key, at most one otherwise.
// A key file or variable holds the key alone; spaces and line breaks
// around it are dropped. Errors never show a key.
func (s keySource) resolve(field, env, file string, required bool) (string, error) {
	switch {
	case env != "" && file != "":
		return "", fmt.Errorf(`"%sEnv" and "%sFile": give one, not both`, field, field)
	case env != "":
		return s.fromEnv(field+"Env", env)
	case file != "":
		b, err := s.readFile(file)
		if err != nil {
			return "", fmt.Errorf(`"%sFile": %w`, field, err)
		}
		k := strings.TrimSpace(string(b))
		if k == "" {
			return "", fmt.Errorf(`"%sFile": %s is empty`, field, file)
		}
		return k, nil
	case required:
		return "", fmt.Errorf(`"%sEnv": missing; name the environment variable (or with "%sFile", the file) that holds this endpoint's key`, field, field)
	}
	return "", nil
}

// fromEnv reads the key or token in the environment variable name, which
// the config's field names, without the spaces and line breaks around it,
// as a key file loses them: a variable set from a file (a Kubernetes
// secret made from one) may keep the file's last line break.
func (s keySource) fromEnv(field, name string) (string, error) {
	v := s.getenv(name)
	k := strings.TrimSpace(v)
	switch {
	case v == "":
		return "", fmt.Errorf(`"%s": environment variable %s is not set or empty`, field, name)
	case k == "":
		return "", fmt.Errorf(`"%s": environment variable %s holds only white space`, field, name)
	}
	return k, nil
}

// checkColumnList refuses a blank or repeated column name: a row file
// cannot have two columns of one name (the output written would not read
// back, nor resume).
func checkColumnList(cols []string) error {
	for i, c := range cols {
		if strings.TrimSpace(c) == "" {
			return fmt.Errorf("column %d has no name", i+1)
		}
		if j := slices.Index(cols[:i], c); j >= 0 {
			return fmt.Errorf("columns %d and %d are both %q", j+1, i+1, c)
		}
	}
	return nil
}

func epLabel(i int, name string) string {
	if name == "" {
		return "endpoints[" + strconv.Itoa(i) + "]"
	}
	return "endpoints[" + strconv.Itoa(i) + "] (" + name + ")"
}

// fileField maps the Endpoint fields that amlpool.New names to the file's.
var fileField = map[string]string{"URL": "url", "APIKey": "apiKeyEnv", "SecondaryKey": "secondaryKeyEnv", "MaxConcurrentCalls": "maxConcurrentCalls", "Name": "name",
	"Kind": "kind", "Header": "header", "Tier": "tier"}

// keyField names the field of e that gave what amlpool.New calls field:
// "apiKeyFile" rather than "apiKeyEnv" for an APIKey read from a file, the
// token's source for an APIKey or a Credential; "" for another field, or
// when e names no source for it.
func (e *endpointConfig) keyField(field string) string {
	type source struct {
		given bool
		name  string
	}
	var sources []source
	switch field {
	case "APIKey", "Credential":
		sources = []source{{e.APIKeyEnv != "", "apiKeyEnv"}, {e.APIKeyFile != "", "apiKeyFile"},
			{e.TokenEnv != "", "tokenEnv"}, {e.TokenFile != "", "tokenFile"}, {e.TokenCommand != nil, "tokenCommand"}}
	case "SecondaryKey":
		sources = []source{{e.SecondaryKeyEnv != "", "secondaryKeyEnv"}, {e.SecondaryKeyFile != "", "secondaryKeyFile"}}
	}
	for _, s := range sources {
		if s.given {
			return s.name
		}
	}
	return ""
}

// newClient builds the Client, naming the file's fields in config errors.
func newClient(path string, cfg *poolConfig, eps []amlpool.Endpoint) (*amlpool.Client, error) {
	c, err := amlpool.New(eps)
	return c, fileError(path, cfg, err)
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
		err = fmt.Errorf("%s: want %s, not a JSON %s", fieldPath(te.Field), jsonKind(te.Type), te.Value)
	case errors.Is(err, io.EOF):
		return errors.New("no JSON in the file; want an object such as {\"endpoints\": [...]}")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s: the JSON ends early; a bracket or quote is not closed", position(data, int64(len(data))))
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") { // duplicateKey finds them first, saying where
		return fmt.Errorf("unknown field %s (known: %s; per endpoint: %s)", strings.TrimPrefix(msg, "json: unknown field "), topFields, endpointFields)
	}
	if off < 0 {
		return err
	}
	return fmt.Errorf("%s: %w", position(data, off), err)
}

// fieldPath is encoding/json's path of a field, "endpoints.1.tier", as
// the config's errors write it: endpoints[1].tier; the file itself for "".
func fieldPath(field string) string {
	if field == "" {
		return "the file"
	}
	var b strings.Builder
	for i, part := range strings.Split(field, ".") {
		if _, err := strconv.Atoi(part); err == nil && i > 0 {
			b.WriteString("[" + part + "]")
			continue
		}
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(part)
	}
	return b.String()
}

// jsonKind names the JSON a config field of type t takes.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list of " + strings.TrimPrefix(strings.TrimPrefix(jsonKind(t.Elem()), "a "), "an ") + "s"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "another value"
}

// The fields of the config's top level and of an endpoint, as an unknown
// field's error lists them.
const (
	topFields      = "endpoints, input, output, inputColumns, outputColumns, globalParameters, chunkRows"
	endpointFields = "name, url, kind, maxConcurrentCalls, tier, apiKeyEnv or apiKeyFile or tokenEnv or tokenFile or tokenCommand (with tokenTTL), secondaryKeyEnv or secondaryKeyFile, header"
)

// knownField says whether key names a field of the struct t, in any case,
// as encoding/json matches them.
func knownField(t reflect.Type, key string) bool {
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); strings.EqualFold(name, key) {
			return true
		}
	}
	return false
}

// position is the line and column of the byte at off.
func position(data []byte, off int64) string {
	line, col := 1, 1
	for _, b := range data[:min(int(off), len(data))] {
		if b == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return fmt.Sprintf("line %d, column %d", line, col)
}

// duplicateKey finds a key given twice in one object of the config, which
// encoding/json takes silently, the last one winning, and a key of the
// top level or of an endpoint that names no field, saying where, which
// encoding/json's error does not. In the top-level
// object and an endpoint's, whose keys encoding/json matches to fields in
// any case, "url" and "URL" are one key. It reads the first JSON value
// only, and leaves a malformed one to the decoder, which says where.
func duplicateKey(data []byte) error {
	type seen struct {
		key string
		off int64
	}
	type container struct {
		path      string
		keys      map[string]seen // an object's keys so far, folded in a struct's; nil in an array
		fold      bool            // the object is the top level's or an endpoint's
		known     reflect.Type    // the struct it fills, whose fields its keys must name; nil for another object
		key       string          // an object's last key
		valueNext bool            // an object's next token is its last key's value
		n         int             // an array's elements so far
		endpoints bool            // the array is the top level's "endpoints"
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var stack []*container
	for {
		before := dec.InputOffset()
		tok, err := dec.Token()
		if err != nil {
			return nil // malformed: the decoder says where
		}
		if tok == json.Delim('}') || tok == json.Delim(']') {
			if stack = stack[:len(stack)-1]; len(stack) == 0 {
				return nil
			}
			continue
		}
		var in *container
		if len(stack) > 0 {
			in = stack[len(stack)-1]
		}
		path := ""
		switch {
		case in == nil:
		case in.keys != nil && !in.valueNext: // a key
			k, _ := tok.(string)
			id := k
			if in.fold {
				id = strings.ToUpper(strings.ToLower(k)) // as encoding/json folds field names
			}
			// The key starts after the space and the comma before it.
			off := before + int64(len(data[before:])-len(bytes.TrimLeft(data[before:], " \t\r\n,")))
			if first, dup := in.keys[id]; dup {
				where, as := "the top-level object", ""
				if in.path != "" {
					where = in.path
				}
				if first.key != k {
					as = fmt.Sprintf(" as %q (keys match in any case)", first.key)
				}
				return fmt.Errorf("%s: %q given twice in %s, first at %s%s; give it once", position(data, off), k, where, position(data, first.off), as)
			}
			if in.known != nil && !knownField(in.known, k) {
				where, known := "", topFields
				if in.path != "" {
					where, known = in.path+": ", endpointFields
				}
				return fmt.Errorf("%s: %sunknown field %q (known: %s)", position(data, off), where, k, known)
			}
			in.keys[id] = seen{k, off}
			in.key, in.valueNext = k, true
			continue
		case in.keys != nil: // its value
			path, in.valueNext = in.key, false
			if in.path != "" {
				path = in.path + "." + in.key
			}
		default:
			path = in.path + "[" + strconv.Itoa(in.n) + "]"
			in.n++
		}
		switch tok {
		case json.Delim('{'):
			c := &container{path: path, keys: map[string]seen{}, fold: in == nil || in.endpoints}
			switch {
			case in == nil:
				c.known = reflect.TypeFor[poolConfig]()
			case in.endpoints:
				c.known = reflect.TypeFor[endpointConfig]()
			}
			stack = append(stack, c)
		case json.Delim('['):
			endpoints := len(stack) == 1 && in.keys != nil && strings.EqualFold(in.key, "endpoints")
			stack = append(stack, &container{path: path, endpoints: endpoints})
		default:
			if in == nil {
				return nil
			}
		}
	}
}
