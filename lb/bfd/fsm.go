package bfd

import "time"

// slowTx is what a session asks to send at while it is not Up: RFC 5880
// section 6.8.3 wants at least a second.
const slowTx = time.Second

// fsm is one session's state and timers (RFC 5880 section 6.8), with no
// sockets and no clock of its own: what it decides is tested without a
// network.
type fsm struct {
	interval time.Duration // configured: desired min TX and required min RX once Up
	mult     uint8

	state     State
	diag      Diag
	local     uint32 // bfd.LocalDiscr
	remote    uint32 // bfd.RemoteDiscr; 0 until the peer is heard
	remoteSt  State
	desiredTx time.Duration // what the packets advertise
	// txUsed and rxUsed are the desired min TX this side sends at and
	// the required min RX its detection time counts with. While a poll
	// sequence announces new values, they keep whichever of old and new
	// is safe (sending faster, waiting longer) until the peer's Final
	// says it knows (RFC 5880 section 6.8.3).
	txUsed, rxUsed time.Duration
	remoteRx       time.Duration // the peer's required min RX (0: send nothing)
	remoteTx       time.Duration // the peer's desired min TX
	remoteMult     uint8
	polling        bool // a poll sequence is under way (a parameter changed)
	lastRx         time.Time
	since          time.Time // when state was entered
}

func newFSM(local uint32, interval time.Duration, mult uint8, now time.Time) *fsm {
	// Until the peer is heard, send at the slow rate (its required min
	// RX is taken as 1 µs, RFC 5880 section 6.8.1).
	return &fsm{interval: interval, mult: mult, state: Down, local: local, remoteSt: Down,
		desiredTx: slowTx, txUsed: slowTx, rxUsed: interval, remoteRx: time.Microsecond, since: now}
}

func micros(d time.Duration) uint32 { return uint32(d / time.Microsecond) }

// packet is the control packet to send now.
func (f *fsm) packet() Packet {
	return Packet{Diag: f.diag, State: f.state, Poll: f.polling, DetectMult: f.mult,
		MyDiscriminator: f.local, YourDiscriminator: f.remote,
		DesiredMinTx: micros(f.desiredTx), RequiredMinRx: micros(f.interval)}
}

// txInterval is the time between periodic packets, before jitter; 0 when
// the peer wants none.
func (f *fsm) txInterval() time.Duration {
	if f.remoteRx == 0 {
		return 0
	}
	return max(f.txUsed, f.remoteRx)
}

// detectTime is how long the peer may stay silent before the session goes
// Down (RFC 5880 section 6.8.4); 0 before the peer is heard.
func (f *fsm) detectTime() time.Duration {
	return time.Duration(f.remoteMult) * max(f.rxUsed, f.remoteTx)
}

// recv applies a packet the peer sent (already checked by Parse and
// addressed to this session). final says to answer at once with Final set.
func (f *fsm) recv(p Packet, now time.Time) (final bool) {
	f.remote, f.remoteSt = p.MyDiscriminator, p.State
	f.remoteRx = time.Duration(p.RequiredMinRx) * time.Microsecond
	f.remoteTx = time.Duration(p.DesiredMinTx) * time.Microsecond
	f.remoteMult = p.DetectMult
	f.lastRx = now
	if p.Final && f.polling {
		f.polling = false
		f.txUsed, f.rxUsed = f.desiredTx, f.interval
	}
	switch {
	case f.state == AdminDown:
		return false
	case p.State == AdminDown:
		if f.state != Down {
			f.enter(Down, DiagNeighborDown, now)
		}
	case f.state == Down && p.State == Down:
		f.enter(Init, DiagNone, now)
	case f.state == Down && p.State == Init, f.state == Init && (p.State == Init || p.State == Up):
		f.enter(Up, DiagNone, now)
	case f.state == Up && p.State == Down:
		f.enter(Down, DiagNeighborDown, now)
	}
	return p.Poll
}

// expire ends a session whose peer stayed silent past the detection time;
// it reports whether it did.
func (f *fsm) expire(now time.Time) bool {
	if (f.state != Init && f.state != Up) || now.Sub(f.lastRx) <= f.detectTime() {
		return false
	}
	f.enter(Down, DiagTimeExpired, now)
	f.remote = 0
	return true
}

// deadline is when expire has something to do, or zero.
func (f *fsm) deadline() time.Time {
	if f.state != Init && f.state != Up {
		return time.Time{}
	}
	return f.lastRx.Add(f.detectTime())
}

// enter moves to state. Up sends at the configured rate, any other state
// at the slow one; a change of rate starts a poll sequence, so the peer
// answers with Final and knows of it at once (RFC 5880 section 6.8.3).
func (f *fsm) enter(state State, diag Diag, now time.Time) {
	f.state, f.diag, f.since = state, diag, now
	want := slowTx
	if state == Up {
		want = f.interval
	}
	if want != f.desiredTx {
		// Safe at once: entering Up only speeds up, and the rate of a
		// session that is not Up may change any time.
		f.desiredTx, f.txUsed, f.polling = want, want, true
	}
}

// update takes new settings on a running session: a poll sequence tells
// the peer, and the session stays as it is.
func (f *fsm) update(interval time.Duration, mult uint8) {
	if interval == f.interval && mult == f.mult {
		return
	}
	f.interval, f.mult, f.polling = interval, mult, true
	if f.state != Up {
		f.rxUsed = interval
		return
	}
	f.desiredTx = interval
	f.txUsed, f.rxUsed = min(f.txUsed, interval), max(f.rxUsed, interval)
}

// adminDown takes the session down on this side (the process stops).
func (f *fsm) adminDown(now time.Time) {
	f.enter(AdminDown, DiagAdminDown, now)
}
