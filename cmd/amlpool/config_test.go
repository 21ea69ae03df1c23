package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// A run never writes over its config, nor over a key or token file the
// config names: an output, rejects or stats file that is one of them
// (spelled otherwise, or through a symlink) is refused before any file is
// opened, with or without --resume. Nor does it read one as its input,
// which would send it as rows and copy it to the output or reject file.
func TestScoreRefusesToWriteOverItsConfigOrKeys(t *testing.T) {
	dir := t.TempDir()
	s := amltest.NewServer(amltest.Config{Name: "east", MaxConcurrentCalls: 2})
	t.Cleanup(s.Close)
	e := s.Endpoint()
	key, key2, token := filepath.Join(dir, "key.txt"), filepath.Join(dir, "key2.txt"), filepath.Join(dir, "token.txt")
	cfg := filepath.Join(dir, "pool.json")
	config := fmt.Sprintf(`{"endpoints":[{"name":"east","url":%q,"apiKeyFile":%q,"secondaryKeyFile":%q,"maxConcurrentCalls":2}]}`, e.URL, key, key2)
	online := filepath.Join(dir, "online.json")
	onlineConfig := fmt.Sprintf(`{"endpoints":[{"url":"http://127.0.0.1:1/score","kind":"online","tokenFile":%q,"maxConcurrentCalls":2}]}`, token)
	in := filepath.Join(dir, "rows.csv")
	link := filepath.Join(dir, "link.json")
	require.NoError(t, os.Symlink(cfg, link))
	keyLink := filepath.Join(dir, "key-link")
	require.NoError(t, os.Symlink(key2, keyLink))
	other := filepath.Join(dir, "scored.csv")
	files := map[string]string{cfg: config, online: onlineConfig, key: e.APIKey + "\n", key2: e.APIKey + "\n", token: "a-token\n", in: "id,name\n1,a\n"}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"out is the config", []string{"--config", cfg, "--out", cfg}, "--out " + cfg + " is the same file as --config " + cfg + ": the run would write over its config; give --out another file"},
		{"out is the config, resumed", []string{"--config", cfg, "--out", cfg, "--resume"}, "--out " + cfg + " is the same file as --config " + cfg + ": the run would write over its config"},
		{"stats is the config", []string{"--config", cfg, "--out", other, "--stats", cfg}, "--stats " + cfg + " is the same file as --config " + cfg},
		{"rejects is the config through a symlink", []string{"--config", cfg, "--out", other, "--rejects", link}, "--rejects " + link + " is the same file as --config " + cfg},
		{"config through a symlink, spelled otherwise", []string{"--config", link, "--out", other, "--stats", dir + "/./pool.json"}, "--stats " + dir + "/./pool.json is the same file as --config " + link},
		{"out is the key file", []string{"--config", cfg, "--out", key, "--resume"},
			"--out " + key + ` is the same file as the "apiKeyFile" of endpoints[0] (east) in ` + cfg + ", " + key + ": the run would write over its key file; give --out another file"},
		{"stats is the second key file", []string{"--config", cfg, "--out", other, "--stats", key2},
			"--stats " + key2 + ` is the same file as the "secondaryKeyFile" of endpoints[0] (east) in ` + cfg + ", " + key2 + ": the run would write over its key file"},
		{"stats is the token file", []string{"--config", online, "--out", other, "--stats", token},
			"--stats " + token + ` is the same file as the "tokenFile" of endpoints[0] in ` + online + ", " + token + ": the run would write over its token file"},
		{"in is the key file", []string{"--config", cfg, "--out", other, "--in", key},
			"--in " + key + ` is the same file as the "apiKeyFile" of endpoints[0] (east) in ` + cfg + ", " + key + ": the run would send its key file as rows; give --in the file of rows to score"},
		{"in is the second key file through a symlink", []string{"--config", cfg, "--out", other, "--in", keyLink},
			"--in " + keyLink + ` is the same file as the "secondaryKeyFile" of endpoints[0] (east) in ` + cfg + ", " + key2 + ": the run would send its key file as rows"},
		{"in is the token file", []string{"--config", online, "--out", other, "--in", token},
			"--in " + token + ` is the same file as the "tokenFile" of endpoints[0] in ` + online + ", " + token + ": the run would send its token file as rows"},
		{"in is the config", []string{"--config", cfg, "--out", other, "--in", link},
			"--in " + link + " is the same file as --config " + cfg + ": the run would send its config as rows"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for path, data := range files {
				require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
			}
			t.Cleanup(func() { // what a run that was let through wrote
				for _, f := range []string{"scored.csv", "scored.rejects.csv", "scored.stats.json"} {
					os.Remove(filepath.Join(dir, f))
				}
			})
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"score", "--in", in}, tt.args...), &stdout, &stderr) // a second --in wins
			assert.Equal(t, 2, code, stderr.String())
			assert.Contains(t, stderr.String(), tt.want)
			assert.NotContains(t, stderr.String(), e.APIKey)
			assert.NotContains(t, stderr.String(), "a-token")
			for path, data := range files {
				got, err := os.ReadFile(path)
				require.NoError(t, err)
				assert.Equal(t, data, string(got), "%s is untouched", path)
			}
			assert.NoFileExists(t, other)
		})
	}
}

// testKeys resolves the variable K, and nothing else.
var testKeys = keySource{
	getenv: func(name string) string {
		if name == "K" {
			return "the-key"
		}
		return ""
	},
	readFile: func(string) ([]byte, error) { return nil, os.ErrNotExist },
}

// A key given twice in one object of the config is an error naming the key,
// the object and both places, not a silent last-one-wins; in an object that
// stands for a struct ("url" and "URL" set one field), in any case.
func TestConfigKeyGivenTwice(t *testing.T) {
	for _, tt := range []struct {
		name, config, want string
	}{
		{"top level", `{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K"}],"chunkRows":10,"chunkRows":20}`,
			`line 1, column 69: "chunkRows" given twice in the top-level object, first at line 1, column 54; give it once`},
		{"an endpoint's", "{\"endpoints\": [\n  {\"url\": \"https://h/x\", \"apiKeyEnv\": \"K\"},\n  {\"url\": \"https://h/y\",\n   \"apiKeyEnv\": \"K\", \"url\": \"https://h/z\"}]}",
			`line 4, column 22: "url" given twice in endpoints[1], first at line 3, column 4; give it once`},
		{"an endpoint's, in another case", `{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K","URL":"https://h/y"}]}`,
			`line 1, column 52: "URL" given twice in endpoints[0], first at line 1, column 16 as "url" (keys match in any case); give it once`},
		{"the top level, in another case", `{"Endpoints":[],"endpoints":[{"url":"https://h/x","apiKeyEnv":"K"}]}`,
			`"endpoints" given twice in the top-level object, first at line 1, column 2 as "Endpoints" (keys match in any case)`},
		{"a header", `{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K","header":{"x-a":"1", "x-a":"2"}}]}`,
			`line 1, column 73: "x-a" given twice in endpoints[0].header, first at line 1, column 62; give it once`},
		{"a global parameter, deep", `{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K"}],"globalParameters":{"p":[{"x":1},{"y":1,"y":2}]}}`,
			`"y" given twice in globalParameters.p[1], first at line 1, column 88`},
		{"escaped alike", `{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K"}],"input":"a","\u0069nput":"b"}`,
			`"input" given twice in the top-level object`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := parseConfig([]byte(tt.config), testKeys)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	for _, ok := range []string{
		`{"endpoints":[{"name":"a","url":"https://h/x","apiKeyEnv":"K"},{"name":"b","url":"https://h/y","apiKeyEnv":"K"}]}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K"}],"globalParameters":{"p":1,"P":2,"q":{"p":1}}}`,
		`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K"}],"inputColumns":["a","b"],"outputColumns":["a"]}`,
	} {
		_, _, err := parseConfig([]byte(ok), testKeys)
		assert.NoError(t, err, ok)
	}
	// Header names that differ in case only are one header: still refused,
	// by the check that was there.
	_, _, err := parseConfig([]byte(`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K","header":{"x-a":"1","X-A":"2"}}]}`), testKeys)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "X-A given twice, in different cases")
}

// A header with an empty value (or spaces, or null) in the config is
// refused, naming the endpoint and the header, not sent empty.
func TestConfigHeaderEmptyValue(t *testing.T) {
	for _, v := range []string{`""`, `"  "`, `null`} {
		_, _, err := parseConfig([]byte(`{"endpoints":[{"name":"blue","url":"https://e/score","kind":"online","maxConcurrentCalls":4,"tokenEnv":"K",`+
			`"header":{"azureml-model-deployment":`+v+`}}]}`), testKeys)
		require.Error(t, err, v)
		assert.Equal(t, `endpoints[0] (blue): "header": "azureml-model-deployment" has an empty value; give its value, or leave the header out`, err.Error(), v)
	}
	_, eps, err := parseConfig([]byte(`{"endpoints":[{"url":"https://e/score","kind":"online","maxConcurrentCalls":4,"tokenEnv":"K","header":{"azureml-model-deployment":"blue"}}]}`), testKeys)
	require.NoError(t, err)
	assert.Equal(t, "blue", eps[0].Header.Get("azureml-model-deployment"))
}

// bench, too, refuses to send its config or a key file as rows.
func TestBenchRefusesToSendItsConfigOrKeys(t *testing.T) {
	dir := t.TempDir()
	key, cfg := filepath.Join(dir, "key.txt"), filepath.Join(dir, "pool.json")
	require.NoError(t, os.WriteFile(key, []byte("the-secret-key\n"), 0o600))
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`{"endpoints":[{"name":"east","url":"http://127.0.0.1:1/execute","apiKeyFile":%q}]}`, key)), 0o600))
	for _, tt := range []struct{ in, want string }{
		{key, "--in " + key + ` is the same file as the "apiKeyFile" of endpoints[0] (east) in ` + cfg + ", " + key + ": the run would send its key file as rows"},
		{cfg, "--in " + cfg + " is the same file as --config " + cfg + ": the run would send its config as rows"},
	} {
		var out, errOut bytes.Buffer
		assert.Equal(t, 2, run([]string{"bench", "--config", cfg, "--in", tt.in, "--duration", "1s"}, &out, &errOut), tt.in)
		assert.Contains(t, errOut.String(), tt.want)
		assert.NotContains(t, errOut.String()+out.String(), "the-secret-key")
	}
}

// A key or token loses the spaces and line breaks around it, from a
// variable (a Kubernetes secret made from a file keeps its line end) as
// from a file, which the Client would refuse; one of white space only is
// an error naming the variable, never its value.
func TestConfigKeysLoseTheWhiteSpaceAroundThem(t *testing.T) {
	dir := t.TempDir()
	keyFile, tokFile := filepath.Join(dir, "key"), filepath.Join(dir, "tok")
	require.NoError(t, os.WriteFile(keyFile, []byte("file-key\n"), 0o600))
	require.NoError(t, os.WriteFile(tokFile, []byte("file-token\r\n"), 0o600))
	env := map[string]string{"K": "env-key\n", "K2": " env-key-2\t", "T": "env-token\n", "BLANK": " \n"}
	keys := keySource{getenv: func(name string) string { return env[name] }, readFile: os.ReadFile}
	_, eps, err := parseConfig([]byte(`{"endpoints":[
		{"name":"a","url":"https://a/x","apiKeyEnv":"K","secondaryKeyEnv":"K2"},
		{"name":"b","url":"https://b/x","apiKeyFile":"`+keyFile+`","secondaryKeyEnv":"K"},
		{"name":"c","url":"https://c/score","kind":"online","maxConcurrentCalls":4,"tokenEnv":"T"},
		{"name":"d","url":"https://d/score","kind":"online","maxConcurrentCalls":4,"tokenFile":"`+tokFile+`"}]}`), keys)
	require.NoError(t, err)
	assert.Equal(t, []string{"env-key", "env-key-2"}, []string{eps[0].APIKey, eps[0].SecondaryKey})
	assert.Equal(t, []string{"file-key", "env-key"}, []string{eps[1].APIKey, eps[1].SecondaryKey})
	for i, want := range map[int]string{2: "env-token", 3: "file-token"} {
		tok, err := eps[i].Credential.Token(t.Context())
		require.NoError(t, err)
		assert.Equal(t, want, tok)
	}
	c, err := amlpool.New(eps[:2])
	require.NoError(t, err, "the Client takes the keys")
	require.NoError(t, c.Close())

	for _, tt := range []struct{ file, want string }{
		{`{"endpoints":[{"name":"a","url":"https://a/x","apiKeyEnv":"BLANK"}]}`, `endpoints[0] (a): "apiKeyEnv": environment variable BLANK holds only white space`},
		{`{"endpoints":[{"url":"https://a/x","apiKeyEnv":"K","secondaryKeyEnv":"BLANK"}]}`, `endpoints[0]: "secondaryKeyEnv": environment variable BLANK holds only white space`},
		{`{"endpoints":[{"url":"https://c/score","kind":"online","maxConcurrentCalls":4,"tokenEnv":"BLANK"}]}`, `endpoints[0]: "tokenEnv": environment variable BLANK holds only white space`},
		{`{"endpoints":[{"url":"https://c/score","kind":"online","maxConcurrentCalls":4,"tokenEnv":"NONE"}]}`, `endpoints[0]: "tokenEnv": environment variable NONE is not set or empty`},
	} {
		_, _, err := parseConfig([]byte(tt.file), keys)
		require.Error(t, err, tt.file)
		assert.Equal(t, tt.want, err.Error())
	}
}

// A key the Client refuses is named by the field it came from: a key file
// with two lines is "apiKeyFile"'s fault, not "apiKeyEnv"'s.
func TestConfigErrorNamesTheKeysSource(t *testing.T) {
	dir := t.TempDir()
	twoLines := filepath.Join(dir, "two-lines")
	require.NoError(t, os.WriteFile(twoLines, []byte("key-one\nkey-two\n"), 0o600))
	env := map[string]string{"K": "env-key", "BAD": "env\x01key"}
	keys := keySource{getenv: func(name string) string { return env[name] }, readFile: os.ReadFile}
	for _, tt := range []struct{ endpoint, want string }{
		{`"apiKeyFile":"` + twoLines + `"`, `"apiKeyFile": contains a line break`},
		{`"apiKeyEnv":"BAD"`, `"apiKeyEnv": contains a control character at byte 3`},
		{`"apiKeyEnv":"K","secondaryKeyFile":"` + twoLines + `"`, `"secondaryKeyFile": contains a line break`},
		{`"apiKeyFile":"` + twoLines + `","secondaryKeyEnv":"BAD"`, `"apiKeyFile": contains a line break`},
		{`"apiKeyEnv":"K","secondaryKeyEnv":"BAD"`, `"secondaryKeyEnv": contains a control character at byte 3`},
	} {
		cfg, eps, err := parseConfig([]byte(`{"endpoints":[{"name":"a","url":"https://a/x",`+tt.endpoint+`}]}`), keys)
		require.NoError(t, err, tt.endpoint)
		_, err = newClient("cfg.json", cfg, eps)
		require.Error(t, err, tt.endpoint)
		assert.Equal(t, `cfg.json: endpoints[0] (a): `+tt.want, err.Error(), tt.endpoint)
		assert.NotContains(t, err.Error(), "key-")
	}
	for e, want := range map[*endpointConfig]string{
		{TokenFile: "t"}: "tokenFile", {TokenEnv: "T"}: "tokenEnv", {TokenCommand: []string{"az"}}: "tokenCommand"} {
		assert.Equal(t, want, e.keyField("Credential"), "a token source")
	}
}

// The configs the docs show — score's help and docs/batch.md — are ones
// the command loads, and their endpoints ones amlpool.New takes.
func TestDocumentedConfigsLoad(t *testing.T) {
	configs := map[string]string{}
	// score -h: the block indented by two spaces after "The config file".
	var help []string
	in := false
	for _, line := range strings.Split(scoreHelp, "\n") {
		switch {
		case strings.HasPrefix(line, `  {"endpoints"`):
			in = true
		case in && line == "":
			in = false
		}
		if in {
			help = append(help, strings.TrimPrefix(line, "  "))
		}
	}
	configs["score -h"] = strings.Join(help, "\n")
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "batch.md"))
	require.NoError(t, err)
	for _, m := range regexp.MustCompile(`(?s)cat > (\S+) <<'JSON'\n(.*?)\nJSON\n`).FindAllStringSubmatch(string(doc), -1) {
		configs["docs/batch.md "+m[1]] = m[2]
	}
	require.Len(t, configs, 3, "score -h's config, and batch.md's pool.json and online.json")
	keys := keySource{
		getenv:   func(string) string { return "the-key" },
		readFile: func(string) ([]byte, error) { return []byte("the-key"), nil },
	}
	for where, text := range configs {
		require.NotEmpty(t, text, where)
		_, eps, err := parseConfig([]byte(text), keys)
		if !assert.NoError(t, err, "%s:\n%s", where, text) {
			continue
		}
		c, err := amlpool.New(eps)
		if assert.NoError(t, err, where) {
			c.Close()
		}
	}
}

// A value of the wrong JSON type names its field by its path in the file,
// endpoints[1].maxConcurrentCalls, and the JSON it wants, not Go's types
// ("want []main.endpointConfig") nor encoding/json's "endpoints.1.…"; an
// empty or cut-short file, and an unknown kind, say so and where.
func TestConfigJSONErrorsNameTheField(t *testing.T) {
	const ep = `{"url":"https://h/x","apiKeyEnv":"K"}`
	for _, tt := range []struct{ config, want string }{
		{`{"endpoints":[` + ep + `,{"url":"https://h/y","apiKeyEnv":"K","maxConcurrentCalls":"20"}]}`,
			`line 1, column 115: endpoints[1].maxConcurrentCalls: want a whole number, not a JSON string`},
		{`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K","tier":1.5}]}`, `endpoints[0].tier: want a whole number, not a JSON number 1.5`},
		{`{"endpoints":{"url":"https://h/x"}}`, `line 1, column 15: endpoints: want a list of objects, not a JSON object`},
		{`{"endpoints":[` + ep + `],"inputColumns":[1]}`, `inputColumns[0]: want a string, not a JSON number`},
		{`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K","tokenCommand":"az"}]}`, `endpoints[0].tokenCommand: want a list of strings, not a JSON string`},
		{`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K","kind":1}]}`, `endpoints[0].kind: want a string, not a JSON number`},
		{`{"endpoints":[{"url":"https://h/x","apiKeyEnv":"K","header":{"a":1}}]}`, `endpoints[0].header.a: want a string, not a JSON number`},
		{`{"endpoints":[` + ep + `],"chunkRows":"100"}`, `chunkRows: want a whole number, not a JSON string`},
		{`[` + ep + `]`, `line 1, column 2: the file: want an object, not a JSON array`},
		{``, `no JSON in the file; want an object such as {"endpoints": [...]}`},
		{" \n", `no JSON in the file; want an object such as {"endpoints": [...]}`},
		{"{\"endpoints\": [\n" + ep, `line 2, column 38: the JSON ends early; a bracket or quote is not closed`},
		{`{"endpoints":[` + ep + `,{"name":"b","url":"https://h/y","apiKeyEnv":"K","kind":"batch"}]}`, `endpoints[1] (b): "kind": "batch": want "classic" or "online"`},
		// An unknown field says in which object, and lists that object's fields.
		{"{\"endpoints\": [\n " + ep + ",\n {\"url\":\"https://h/y\",\"apiKeyEnv\":\"K\",\"maxConcurentCalls\":3}]}",
			`line 3, column 39: endpoints[1]: unknown field "maxConcurentCalls" (known: name, url, kind, maxConcurrentCalls, tier, `},
		{`{"endpoints":[` + ep + `],"chunks":5}`, `line 1, column 54: unknown field "chunks" (known: endpoints, input, output, inputColumns, outputColumns, globalParameters, chunkRows)`},
	} {
		_, _, err := parseConfig([]byte(tt.config), testKeys)
		require.Error(t, err, tt.config)
		assert.Contains(t, err.Error(), tt.want, tt.config)
		assert.NotContains(t, err.Error(), "main.", tt.config)
		assert.NotContains(t, err.Error(), "endpoints.", tt.config)
	}
}

// bench never writes its statistics over a file it reads: a --stats that
// is its input, its config or a key file (through a symlink too) is
// refused before any load is driven, as score's is. It once drove the
// load and then wrote the statistics over that file.
func TestBenchRefusesToWriteItsStatsOverWhatItReads(t *testing.T) {
	dir := t.TempDir()
	key, cfg, in := filepath.Join(dir, "key.txt"), filepath.Join(dir, "pool.json"), filepath.Join(dir, "rows.csv")
	link := filepath.Join(dir, "link.json")
	require.NoError(t, os.Symlink(cfg, link))
	files := map[string]string{key: "the-secret-key\n", cfg: fmt.Sprintf(`{"endpoints":[{"name":"east","url":"http://127.0.0.1:1/execute","apiKeyFile":%q}]}`, key),
		in: "id\n1\n"}
	for _, tt := range []struct{ stats, want string }{
		{in, "--stats " + in + " is the same file as --in " + in + ": the run would write over its input; give --stats another file"},
		{link, "--stats " + link + " is the same file as --config " + cfg + ": the run would write over its config; give --stats another file"},
		{key, "--stats " + key + ` is the same file as the "apiKeyFile" of endpoints[0] (east) in ` + cfg + ", " + key + ": the run would write over its key file; give --stats another file"},
	} {
		for path, text := range files {
			require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
		}
		var out, errOut bytes.Buffer
		assert.Equal(t, 2, run([]string{"bench", "--config", cfg, "--in", in, "--duration", "50ms", "--stats", tt.stats}, &out, &errOut), tt.stats)
		assert.Equal(t, "amlpool bench: "+tt.want+"\n", errOut.String())
		assert.Empty(t, out.String(), "no load was driven")
		for path, text := range files {
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, text, string(got), "%s is untouched", path)
		}
	}
}
