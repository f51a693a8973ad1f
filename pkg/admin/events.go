package admin

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/l4lb/l4lb/pkg/api"
)

// Events is what GET /v1/events reads: the ring of recent events, and a
// way to follow it.
type Events interface {
	EventsSince(seq uint64, at time.Time) []api.Event
	// FollowEvents gives the events after seq, and a channel of those that
	// come next, until stop.
	FollowEvents(seq uint64, at time.Time) (past []api.Event, next <-chan api.Event, stop func())
}

// eventsRoute serves GET /v1/events: the recent events, oldest first;
// ?since= takes a sequence number (the events after it) or an RFC 3339
// time (those at or after it); ?follow=1 streams them, one JSON object a
// line (application/x-ndjson), as they come, until the client goes.
func eventsRoute(mux *http.ServeMux, ev Events) {
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		var seq uint64
		var at time.Time
		if s := q.Get("since"); s != "" {
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				if at, err = time.Parse(time.RFC3339, s); err != nil {
					writeError(w, http.StatusBadRequest, "since: want a sequence number or an RFC 3339 time, got "+strconv.Quote(s))
					return
				}
			}
			seq = n
		}
		follow := q.Get("follow")
		if follow == "" || follow == "0" || follow == "false" {
			writeJSON(w, http.StatusOK, ev.EventsSince(seq, at))
			return
		}
		past, next, stop := ev.FollowEvents(seq, at)
		defer stop()
		rc := http.NewResponseController(w)
		rc.SetReadDeadline(time.Time{}) // the request is read; the stream lasts
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		enc := json.NewEncoder(w)
		last := seq
		send := func(e api.Event) bool {
			if e.Seq <= last {
				return true // in the past and the stream both
			}
			last = e.Seq
			return enc.Encode(e) == nil
		}
		for _, e := range past {
			if !send(e) {
				return
			}
		}
		rc.Flush()
		keepAlive := time.NewTicker(15 * time.Second)
		defer keepAlive.Stop()
		for {
			select {
			case <-req.Context().Done():
				return
			case e, ok := <-next:
				if !ok || !send(e) {
					return
				}
			case <-keepAlive.C:
				if _, err := w.Write([]byte("\n")); err != nil { // an empty line: the reader skips it
					return
				}
			}
			if rc.Flush() != nil {
				return
			}
		}
	})
}
