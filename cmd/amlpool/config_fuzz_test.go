package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
)

// FuzzParseConfig feeds the pool file parser arbitrary files. The bar: no
// panic; no key or token in any error, the parser's or New's (but where the
// file itself has the key's text as a name, which an error may quote); every
// endpoint it accepts carries the key of the variable or file it names, or
// a token source.
func FuzzParseConfig(f *testing.F) {
	const key = "env-held-key-0123456789"
	for _, seed := range []string{
		`{"endpoints":[{"name":"east","url":"https://h/workspaces/w/services/e/execute?api-version=2.0","apiKeyEnv":"K","maxConcurrentCalls":20}]}`,
		`{"endpoints":[{"url":"http://127.0.0.1:1/x","apiKeyEnv":"K"}],"chunkRows":-1}`,
		`{"endpoints":[{"url":"http://example.com/x","apiKeyEnv":"K","maxConcurrentCalls":999}]}`,
		`{"endpoints":[{"url":"https://h/x","apiKey":"` + key + `"}]}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"NOPE"}]}`,
		`{"endpoints":[]}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K"}]} {}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyFile":"k.txt","secondaryKeyEnv":"K"}]}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyFile":"k.txt","apiKeyEnv":"K"}]}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyFile":"missing.txt"}]}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K","extra":1}]}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K"}],"globalParameters":{"a":[1,{"b":null}]}}`,
		`[`, ``, `null`,
		`{"endpoints":[{"url":"https://e.westeurope.inference.ml.azure.com/score","kind":"online","maxConcurrentCalls":300,"tokenEnv":"K","header":{"azureml-model-deployment":"blue"}}]}`,
		`{"endpoints":[{"url":"https://e/score","kind":"online","apiKeyEnv":"K"}]}`,
		`{"endpoints":[{"url":"https://e/score","kind":"Online","maxConcurrentCalls":1,"tokenCommand":["true"],"tokenTTL":"1m"}]}`,
		`{"endpoints":[{"url":"https://e/score","kind":"batch","tokenEnv":"K"}]}`,
		`{"endpoints":[{"url":"https://e/score","kind":"online","maxConcurrentCalls":1,"tokenFile":"/nonexistent","apiKeyEnv":"K"}]}`,
		`{"endpoints":[{"url":"https://e/score","token":"` + key + `"}]}`,
		`{"endpoints":[{"url":"https://e/score","apiKeyEnv":"K","header":{"Authorization":"Bearer ` + key + `"}}]}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K"},{"url":"https://e/score","kind":"online","maxConcurrentCalls":4,"tokenEnv":"K"}]}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K","URL":"https://h/y"}],"chunkRows":1,"chunkRows":2}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K","header":{"a":"1","a":""}}],"globalParameters":{"p":[{"x":1,"x":[]}]}}`,
		`{"Endpoints":[],"endpoints":[{"url":"https://h/x","apiKeyEnv":"K"}]}`,
	} {
		f.Add([]byte(seed))
	}
	keys := keySource{
		getenv: func(name string) string {
			if name == "K" {
				return key
			}
			return ""
		},
		readFile: func(name string) ([]byte, error) {
			if name == "k.txt" {
				return []byte(" " + key + "\n"), nil
			}
			return nil, os.ErrNotExist
		},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, eps, err := parseConfig(data, keys)
		if err != nil {
			// A name of the file's own may be the key's text (an
			// unknown field named so); an error names it, as it must.
			if !namesKey(data, key) {
				require.NotContains(t, err.Error(), key)
			}
			return
		}
		require.Len(t, eps, len(cfg.Endpoints))
		for i, e := range eps {
			require.Contains(t, []string{"", key}, e.SecondaryKey)
			if e.Credential == nil {
				require.Equal(t, key, e.APIKey)
			} else {
				require.Empty(t, e.APIKey)
				if cfg.Endpoints[i].TokenEnv != "" {
					tok, err := e.Credential.Token(t.Context())
					require.NoError(t, err)
					require.Equal(t, key, tok)
				}
			}
		}
		c, err := amlpool.New(eps)
		if err != nil {
			require.True(t, errors.Is(err, amlpool.ErrInvalidConfig), "New: %v", err)
			require.NotContains(t, err.Error(), key)
			return
		}
		require.NoError(t, c.Close())
	})
}

// namesKey reports whether data, read as JSON as far as it goes, has a
// member whose name holds key.
func namesKey(data []byte, key string) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct{ obj, wantName bool }
	var open []frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(open) > 0 {
			top = &open[len(open)-1]
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			open = open[:len(open)-1]
			continue
		}
		if top != nil && top.obj {
			if top.wantName {
				if name, _ := tok.(string); strings.Contains(name, key) {
					return true
				}
				top.wantName = false
				continue
			}
			top.wantName = true // the member's value: a name comes next
		}
		if d, ok := tok.(json.Delim); ok {
			open = append(open, frame{obj: d == '{', wantName: d == '{'})
		}
	}
}

func TestNamesKey(t *testing.T) {
	const k = "sekrit"
	for in, want := range map[string]bool{
		`{"sekrit"`:                           true,
		`{"sekrit"0`:                          true,
		`{"a":1,"sekrit":2}`:                  true,
		`{"a":{"b":[1,{"sekrit":1}]}}`:        true,
		`{"a":"sekrit"}`:                      false,
		`{"a":["x","sekrit"]}`:                false,
		`{"a":{"b":1},"c":"sekrit"}`:          false,
		`["sekrit"]`:                          false,
		`{"endpoints":[{"apiKey":"sekrit"}]}`: false,
	} {
		if got := namesKey([]byte(in), k); got != want {
			t.Errorf("namesKey(%s) = %v, want %v", in, got, want)
		}
	}
}
