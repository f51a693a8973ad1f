package lint

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportGraph keeps each package to its job: lb/fastpath is the
// kernel paths' mechanism and knows nothing of the registry, metrics or
// logs (lb/kernelpath joins them); the registry speaks its own types, and
// the admin layer converts them to the API's.
func TestImportGraph(t *testing.T) {
	for _, c := range []struct {
		pkg       string
		forbidden []string
	}{
		{"github.com/l4lb/l4lb/lb/fastpath", []string{"github.com/l4lb/l4lb/lb/registry", "github.com/prometheus/", "go.uber.org/zap", "github.com/google/nftables"}},
		{"github.com/l4lb/l4lb/lb/registry", []string{"github.com/l4lb/l4lb/pkg/api"}},
	} {
		out, err := exec.Command("go", "list", "-deps", "-test", c.pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", c.pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range c.forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("%s depends on %s", c.pkg, dep)
				}
			}
		}
	}
}
