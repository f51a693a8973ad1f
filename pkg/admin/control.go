package admin

import (
	"errors"
	"net/http"

	"github.com/l4lb/l4lb/pkg/api"
)

// Control is what the process-control endpoints need: the running
// configuration, a reload of its file, and a binary upgrade.
type Control interface {
	Config() api.Config
	// Reload reads, validates and applies the config file. A refused file
	// is an error wrapping api.ErrInvalid that is also a FieldErrors.
	Reload() (api.Config, error)
	// Upgrade starts the binary again and returns once the new process
	// serves, or with the reason it could not.
	Upgrade() (api.Upgrade, error)
}

// FieldErrors is an error that lists one "path: problem" line per field.
type FieldErrors interface {
	error
	Lines() []string
}

func controlRoutes(mux *http.ServeMux, c Control) {
	mux.HandleFunc("GET /v1/config", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, c.Config())
	})
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, _ *http.Request) {
		cfg, err := c.Reload()
		var fe FieldErrors
		if errors.As(err, &fe) {
			writeJSON(w, http.StatusBadRequest, api.Error{Error: "config refused; the running config is kept", Errors: fe.Lines()})
			return
		}
		reply(w, http.StatusOK, cfg, err)
	})
	mux.HandleFunc("POST /v1/upgrade", func(w http.ResponseWriter, _ *http.Request) {
		u, err := c.Upgrade()
		reply(w, http.StatusOK, u, err)
	})
}
