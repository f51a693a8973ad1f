package lb

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/pkg/admin"
	"github.com/l4lb/l4lb/pkg/config"
)

// FuzzAdminAPI sends arbitrary requests to the admin API in front of a real
// server: whatever comes, the answer is a 2xx or a 4xx with a JSON
// {"error": ...} body that says why, never a 5xx or a panic.
func FuzzAdminAPI(f *testing.F) {
	e := startEcho(f)
	srv, err := New(testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{})
	if err != nil {
		f.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	h := admin.Handler(admin.Options{Registry: srv})
	methods := []string{http.MethodGet, http.MethodPost, http.MethodDelete, http.MethodPut}
	f.Add(uint8(1), "target-groups/tg/targets", `{"address": "127.0.0.1:9", "weight": 2}`)
	f.Add(uint8(2), "target-groups/tg/targets/127.0.0.1:9", "")
	f.Add(uint8(0), "route?listener=test&src=127.0.0.1:5&protocol=udp&sni=a.b", "")
	f.Add(uint8(0), "flows?listener=test&limit=x", "")
	f.Add(uint8(1), "target-groups/nope/targets", `{"address": "300.1.1.1"}{}`)
	f.Add(uint8(0), "zones/a/health", "")
	f.Fuzz(func(t *testing.T, m uint8, path, body string) {
		req, err := http.NewRequest(methods[int(m)%len(methods)], "/v1/"+path, strings.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		switch code := w.Code; {
		case code >= 500:
			t.Fatalf("%s /v1/%s %q: %d %s", req.Method, path, body, code, w.Body)
		case code >= 400 && code != http.StatusNotFound && code != http.StatusMethodNotAllowed:
			var e struct{ Error string }
			if json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Error == "" {
				t.Fatalf("%s /v1/%s %q: %d without a reason: %s", req.Method, path, body, code, w.Body)
			}
		}
	})
}
