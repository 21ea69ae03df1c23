package amlpool

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDocListsEveryError: the package doc's Errors section names every
// exported error value (var Err…) and error type (…Error), so that a new one
// does not go unlisted.
func TestDocListsEveryError(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	require.NoError(t, err)
	_, section, ok := strings.Cut(string(doc), "// # Errors\n")
	require.True(t, ok, "doc.go has an Errors section")
	section, _, _ = strings.Cut(section, "\n// # ")

	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	var names []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		require.NoError(t, err)
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok {
				continue
			}
			for _, s := range g.Specs {
				switch s := s.(type) {
				case *ast.ValueSpec:
					for _, id := range s.Names {
						if g.Tok == token.VAR && id.IsExported() && strings.HasPrefix(id.Name, "Err") {
							names = append(names, "["+id.Name+"]")
						}
					}
				case *ast.TypeSpec:
					if s.Name.IsExported() && strings.HasSuffix(s.Name.Name, "Error") {
						names = append(names, "[*"+s.Name.Name+"]")
					}
				}
			}
		}
	}
	require.NotEmpty(t, names)
	for _, name := range names {
		assert.Contains(t, section, name, "doc.go's Errors section lists %s", name)
	}
}
