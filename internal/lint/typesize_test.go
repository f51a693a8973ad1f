// Package lint holds checks over the whole source tree that no compiler
// makes.
package lint

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// maxMembers bounds a type's fields and its methods: a type larger than
// that is more than one reader can hold in mind, and is better split along
// the lines of what its parts do.
const maxMembers = 20

// TestTypesStaySmall checks every non-generated Go type in the tree: at
// most maxMembers fields (an embedded struct counts once) and at most
// maxMembers methods declared on it.
func TestTypesStaySmall(t *testing.T) {
	fields, methods := map[string]int{}, map[string]int{}
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != "../.." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "node_modules" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ParseComments|parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		if ast.IsGenerated(f) {
			return nil
		}
		pkg := filepath.Dir(strings.TrimPrefix(path, "../../"))
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					ts, ok := spec.(*ast.TypeSpec)
					if !ok {
						continue
					}
					if st, ok := ts.Type.(*ast.StructType); ok {
						n := 0
						for _, fl := range st.Fields.List {
							n += max(len(fl.Names), 1)
						}
						fields[pkg+"."+ts.Name.Name] = n
					}
				}
			case *ast.FuncDecl:
				if d.Recv != nil {
					methods[pkg+"."+receiverName(d.Recv.List[0].Type)]++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, n := range fields {
		if n > maxMembers {
			t.Errorf("%s has %d fields (at most %d)", name, n, maxMembers)
		}
	}
	for name, n := range methods {
		if n > maxMembers {
			t.Errorf("%s has %d methods (at most %d)", name, n, maxMembers)
		}
	}
}

// receiverName is the type a method's receiver names.
func receiverName(e ast.Expr) string {
	for {
		switch x := e.(type) {
		case *ast.StarExpr:
			e = x.X
		case *ast.IndexExpr:
			e = x.X
		case *ast.IndexListExpr:
			e = x.X
		case *ast.Ident:
			return x.Name
		default:
			return "?"
		}
	}
}
