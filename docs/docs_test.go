package docs_test

import (
	"bytes"
	"context"
	"go/ast"
	"go/doc/comment"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/internal/redistest"
	"github.com/amlpool/amlpool/rows"
)

// Tests of the docs themselves: README.md and the pages of this directory.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pages returns the docs' Markdown files, by path from this directory.
func pages(t *testing.T) map[string]string {
	t.Helper()
	paths, err := filepath.Glob("*.md")
	require.NoError(t, err)
	paths = append(paths, filepath.Join("..", "README.md"))
	out := make(map[string]string, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		out[p] = string(b)
	}
	return out
}

var goBlock = regexp.MustCompile("(?ms)^```go\n(.*?)\n```$")

// snippets returns the bodies of the snippet… funcs of snippets_test.go,
// unindented by one tab, by func name.
func snippets(t *testing.T) map[string]string {
	t.Helper()
	src, err := os.ReadFile("snippets_test.go")
	require.NoError(t, err)
	f, err := parser.ParseFile(token.NewFileSet(), "snippets_test.go", src, parser.ParseComments)
	require.NoError(t, err)
	out := map[string]string{}
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || !strings.HasPrefix(fn.Name.Name, "snippet") {
			continue
		}
		body := string(src[fn.Body.Lbrace+1 : fn.Body.Rbrace-1])
		lines := strings.Split(strings.Trim(body, "\n"), "\n")
		for i, l := range lines {
			lines[i] = strings.TrimPrefix(l, "\t")
		}
		out[fn.Name.Name] = strings.Join(lines, "\n")
	}
	return out
}

// TestEverySnippetCompiles checks that every ```go block of the docs is
// the body of a snippet func, which the compiler has checked, and that no
// snippet func is left that the docs no longer show.
func TestEverySnippetCompiles(t *testing.T) {
	code := snippets(t)
	require.NotEmpty(t, code)
	used := map[string]bool{}
	blocks := 0
	for path, text := range pages(t) {
		for _, m := range goBlock.FindAllStringSubmatch(text, -1) {
			blocks++
			found := false
			for name, body := range code {
				if body == m[1] {
					used[name], found = true, true
				}
			}
			assert.True(t, found, "%s: a ```go block that is no snippet func's body in snippets_test.go:\n%s", path, m[1])
		}
		// A block marked otherwise, or indented, would escape the check.
		assert.NotRegexp(t, "(?m)^[ \\t]*```(golang|Go)\\b|^[ \\t]+```go", text, "%s: a Go block the check cannot see", path)
	}
	assert.Positive(t, blocks)
	// The package documentation's code blocks, as go doc shows them.
	for _, block := range packageDocCode(t) {
		found := false
		for name, body := range code {
			if body == block {
				used[name], found = true, true
			}
		}
		assert.True(t, found, "../doc.go: a code block that is no snippet func's body in snippets_test.go:\n%s", block)
	}
	for name := range code {
		assert.True(t, used[name], "%s in snippets_test.go is in no doc", name)
	}
}

// TestSnippetsRun runs each snippet against fake endpoints.
func TestSnippetsRun(t *testing.T) {
	pool := func(t *testing.T, n int) []amlpool.Endpoint {
		var eps []amlpool.Endpoint
		for range n {
			s := amltest.NewServer(amltest.Config{MaxConcurrentCalls: 4})
			t.Cleanup(s.Close)
			eps = append(eps, s.Endpoint())
		}
		return eps
	}
	t.Run("quick start", func(t *testing.T) {
		eps := pool(t, 2)
		t.Setenv("AML_KEY_EAST", eps[0].APIKey)
		t.Setenv("AML_KEY_WEST", eps[1].APIKey)
		snippetQuickStart(t.Context(), eps[0].URL, eps[1].URL)
	})
	t.Run("package doc", func(t *testing.T) {
		eps := pool(t, 2)
		require.NoError(t, snippetPackageDoc(t.Context(), eps[0].URL, eps[0].APIKey, eps[1].URL, eps[1].APIKey))
	})
	t.Run("testing", snippetTesting)
	t.Run("ScoreRows", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "rows.csv"), []byte("age,income\n39,52000\n52,61000\n"), 0o644))
		t.Chdir(dir)
		c, err := amlpool.New(pool(t, 1))
		require.NoError(t, err)
		defer c.Close()
		snippetScoreRows(t.Context(), c)
	})
	t.Run("balancing", func(t *testing.T) { snippetBalancing(pool(t, 2)) })
	t.Run("who goes first", func(t *testing.T) {
		eps := pool(t, 2)
		t.Setenv("AML_KEY_NEAR", eps[0].APIKey)
		t.Setenv("AML_KEY_FAR", eps[1].APIKey)
		src, err := rows.NewCSVReader(strings.NewReader("age\n39\n52\n"))
		require.NoError(t, err)
		scored := 0
		sink := func(ch *amlpool.Chunk) error {
			require.NoError(t, ch.Err)
			scored += len(ch.Input)
			return nil
		}
		snippetWhoGoesFirst(t.Context(), eps[0].URL, eps[1].URL, src, sink,
			[]byte(`{"Inputs":{"input1":{"ColumnNames":["age"],"Values":[["39"]]}},"GlobalParameters":{}}`))
		assert.Equal(t, 2, scored)
	})
	t.Run("observability", func(t *testing.T) { snippetObservability(t.Context(), pool(t, 1)) })
	t.Run("online quick start", func(t *testing.T) {
		blue := amltest.NewServer(amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: 24, Deployment: "blue"})
		t.Cleanup(blue.Close)
		green := amltest.NewServer(amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: 300})
		t.Cleanup(green.Close)
		t.Setenv("AML_KEY_BLUE", blue.Endpoint().APIKey)
		t.Setenv("AML_KEY_GREEN", green.Endpoint().APIKey)
		snippetOnlineQuickStart(t.Context(), blue.URL(), green.URL())
		assert.Equal(t, int64(1), blue.Stats().Scored+green.Stats().Scored)
	})
	t.Run("online endpoints", func(t *testing.T) {
		srv := amltest.NewServer(amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: 24, Deployment: "blue",
			AcceptToken: func(tok string) bool { return tok == "aad-token" }})
		t.Cleanup(srv.Close)
		snippetOnlineEndpoints(t.Context(), srv.URL(), amlpool.CredentialFunc(func(context.Context) (string, error) { return "aad-token", nil }))
		assert.Equal(t, int64(1), srv.Stats().Scored)
	})
	t.Run("SetEndpoints", func(t *testing.T) {
		east := amltest.NewServer(amltest.Config{Name: "east", Key: "old-primary", SecondaryKey: "secondary"})
		t.Cleanup(east.Close)
		north := amltest.NewServer(amltest.Config{Name: "north"})
		t.Cleanup(north.Close)
		eps := []amlpool.Endpoint{east.Endpoint()}
		c, err := amlpool.New(eps)
		require.NoError(t, err)
		defer c.Close()
		east.SetKeys("new-primary", "secondary") // regenerated in the portal
		snippetSetEndpoints(c, eps, north.URL(), north.Endpoint().APIKey, "new-primary", "secondary")
		var names []string
		for _, e := range c.Stats().Endpoints {
			names = append(names, e.Name)
		}
		assert.Equal(t, []string{"east", "north"}, names)
		_, err = c.Do(t.Context(), []byte(`{"Inputs":{"input1":{"ColumnNames":["age"],"Values":[["39"]]}},"GlobalParameters":{}}`))
		require.NoError(t, err)
	})
	t.Run("fleet", func(t *testing.T) {
		rdb := miniredis.RunT(t)
		body := []byte(`{"Inputs":{"input1":{"ColumnNames":["age"],"Values":[["39"]]}},"GlobalParameters":{}}`)
		snippetFleet(t.Context(), rdb.Addr(), pool(t, 2), body)
	})
	t.Run("fleet on Sentinel", func(t *testing.T) {
		s := redistest.StartSentinel(t)
		snippetFleetSentinel([]string{s.Sentinel.Addr})
	})
}

// packageDocCode returns the code blocks of the root package's
// documentation (doc.go), unindented, without their last line break.
func packageDocCode(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join("..", "doc.go"), nil, parser.ParseComments|parser.PackageClauseOnly)
	require.NoError(t, err)
	require.NotNil(t, f.Doc, "../doc.go has a package comment")
	var p comment.Parser
	var out []string
	for _, b := range p.Parse(f.Doc.Text()).Content {
		if c, ok := b.(*comment.Code); ok {
			out = append(out, strings.TrimSuffix(c.Text, "\n"))
		}
	}
	require.NotEmpty(t, out, "../doc.go shows code")
	return out
}

var (
	mdLink   = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	codeSpan = regexp.MustCompile("(?s)```.*?```|`[^`\n]*`")
	heading  = regexp.MustCompile(`(?m)^#+ (.+)$`)
)

// slug is the anchor GitHub gives a heading.
func slug(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('0' <= r && r <= '9'):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestLinks checks that the docs' links to files of the repository, and
// to headings in them, lead somewhere.
func TestLinks(t *testing.T) {
	all := pages(t)
	for path, text := range all {
		text = codeSpan.ReplaceAllString(goBlock.ReplaceAllString(text, ""), "")
		for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			dest := path
			if file != "" {
				dest = filepath.Join(filepath.Dir(path), file)
			}
			_, err := os.Stat(dest)
			if !assert.NoError(t, err, "%s: link %s", path, target) || anchor == "" {
				continue
			}
			headings, err := os.ReadFile(dest)
			require.NoError(t, err)
			var slugs []string
			for _, h := range heading.FindAllStringSubmatch(string(headings), -1) {
				slugs = append(slugs, slug(h[1]))
			}
			assert.Contains(t, slugs, anchor, "%s: link %s: no such heading in %s", path, target, dest)
		}
	}
}

// TestReadmeTestCommandIsCIs: the README's test command is the one CI runs.
func TestReadmeTestCommandIsCIs(t *testing.T) {
	const cmd = "go test -race -count=1 ./..."
	ci, err := os.ReadFile(filepath.Join("..", ".ci", "run"))
	require.NoError(t, err)
	assert.Contains(t, strings.Split(string(ci), "\n"), cmd, ".ci/run runs the README's test command")
	assert.Contains(t, pages(t)[filepath.Join("..", "README.md")], "\n"+cmd+" ", "README.md shows it")
}

// TestNothingCitesFilesOutsideTheRepository: the repository stands alone,
// so no file may point to notes kept outside it.
func TestNothingCitesFilesOutsideTheRepository(t *testing.T) {
	// Spelled in pieces, so that this file does not match itself.
	outside := regexp.MustCompile(`\.\./` + `shared|\b(DESIGN|AZURE` + `ML|PEERS|FLEET|STYLE)\.` + `md\b`)
	root := ".."
	var checked int
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" || (path != root && slices.Contains([]string{"node_modules"}, d.Name())) {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Name() == ".git" {
			return nil // a worktree's pointer file
		}
		b, err := os.ReadFile(path)
		if err != nil || bytes.IndexByte(b, 0) >= 0 {
			return err // binary files hold no prose
		}
		checked++
		for i, line := range strings.Split(string(b), "\n") {
			assert.False(t, outside.MatchString(line), "%s:%d cites a file outside the repository: %s", path, i+1, line)
		}
		return nil
	})
	require.NoError(t, err)
	assert.Greater(t, checked, 100)
}
