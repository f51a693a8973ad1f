package admin

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/l4lb/l4lb/pkg/api"
)

// Registry is what the target and routing endpoints need; the data plane's
// server implements it. Errors wrapping api.ErrNotFound become 404,
// api.ErrInvalid 400, api.ErrConflict 409.
type Registry interface {
	TargetGroups() []api.TargetGroup
	TargetGroup(name string) (api.TargetGroup, error)
	Register(group string, req api.RegisterRequest) (api.TargetHealth, error)
	Deregister(group, address string) error
	Route(listener, src, dst, protocol, sni string) (api.Route, error)
	// RouteQUIC says which target a QUIC listener sends a packet whose
	// destination connection ID is dcid (0x and hex) to, and why.
	RouteQUIC(listener, dcid string) (api.Route, error)
	Flows(listener string, limit int) ([]api.Flow, error)
	ZoneHealth(zone string) (api.ZoneHealth, error)
	Zones() []api.Zone
	ShiftZone(zone, expiresIn string) (api.ZonalShift, error)
	CancelZoneShift(zone string) error
}

// maxBody bounds request bodies; a registration is a few dozen bytes.
const maxBody = 64 << 10

func registryRoutes(mux *http.ServeMux, r Registry) {
	mux.HandleFunc("GET /v1/target-groups", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, r.TargetGroups())
	})
	mux.HandleFunc("GET /v1/target-groups/{name}", func(w http.ResponseWriter, req *http.Request) {
		tg, err := r.TargetGroup(req.PathValue("name"))
		reply(w, http.StatusOK, tg, err)
	})
	mux.HandleFunc("GET /v1/target-groups/{name}/targets", func(w http.ResponseWriter, req *http.Request) {
		tg, err := r.TargetGroup(req.PathValue("name"))
		reply(w, http.StatusOK, tg.Targets, err)
	})
	mux.HandleFunc("POST /v1/target-groups/{name}/targets", func(w http.ResponseWriter, req *http.Request) {
		var body api.RegisterRequest
		dec := json.NewDecoder(io.LimitReader(req.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			writeError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
			return
		}
		if dec.More() {
			writeError(w, http.StatusBadRequest, "malformed JSON body: more than one object")
			return
		}
		if body.Address == "" {
			writeError(w, http.StatusBadRequest, "address: required")
			return
		}
		th, err := r.Register(req.PathValue("name"), body)
		reply(w, http.StatusOK, th, err)
	})
	mux.HandleFunc("DELETE /v1/target-groups/{name}/targets/{address}", func(w http.ResponseWriter, req *http.Request) {
		err := r.Deregister(req.PathValue("name"), req.PathValue("address"))
		reply(w, http.StatusOK, map[string]string{"status": "draining"}, err)
	})
	mux.HandleFunc("GET /v1/route", func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		if dcid := q.Get("quic_dcid"); dcid != "" && q.Get("listener") != "" {
			rt, err := r.RouteQUIC(q.Get("listener"), dcid)
			reply(w, http.StatusOK, rt, err)
			return
		}
		if q.Get("listener") == "" || q.Get("src") == "" {
			writeError(w, http.StatusBadRequest, "listener and src (or quic_dcid) are required")
			return
		}
		rt, err := r.Route(q.Get("listener"), q.Get("src"), q.Get("dst"), q.Get("protocol"), q.Get("sni"))
		reply(w, http.StatusOK, rt, err)
	})
	mux.HandleFunc("GET /v1/flows", func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		limit := 100
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 100000 {
				writeError(w, http.StatusBadRequest, "limit: want 1-100000")
				return
			}
			limit = n
		}
		fl, err := r.Flows(q.Get("listener"), limit)
		reply(w, http.StatusOK, fl, err)
	})
	mux.HandleFunc("GET /v1/zones", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, r.Zones())
	})
	mux.HandleFunc("POST /v1/zones/{zone}/shift", func(w http.ResponseWriter, req *http.Request) {
		var body api.ZoneShiftRequest
		dec := json.NewDecoder(io.LimitReader(req.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			writeError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
			return
		}
		if body.ExpiresIn == "" {
			writeError(w, http.StatusBadRequest, "expires_in: required (a duration, 1m to 72h)")
			return
		}
		sh, err := r.ShiftZone(req.PathValue("zone"), body.ExpiresIn)
		reply(w, http.StatusOK, sh, err)
	})
	mux.HandleFunc("DELETE /v1/zones/{zone}/shift", func(w http.ResponseWriter, req *http.Request) {
		err := r.CancelZoneShift(req.PathValue("zone"))
		reply(w, http.StatusOK, map[string]string{"zone": req.PathValue("zone"), "zonal_shift": "cancelled"}, err)
	})
	mux.HandleFunc("GET /v1/zones/{zone}/health", func(w http.ResponseWriter, req *http.Request) {
		zh, err := r.ZoneHealth(req.PathValue("zone"))
		code := http.StatusOK
		if err == nil && !zh.Healthy {
			code = http.StatusServiceUnavailable
		}
		reply(w, code, zh, err)
	})
}

// reply writes v with code, or the error with the status its kind maps to.
func reply(w http.ResponseWriter, code int, v any, err error) {
	switch {
	case err == nil:
		writeJSON(w, code, v)
	case errors.Is(err, api.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, api.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, api.ErrConflict):
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, api.Error{Error: msg})
}
