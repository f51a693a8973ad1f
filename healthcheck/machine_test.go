package healthcheck

import "testing"

func TestMachineRiseFall(t *testing.T) {
	m := Machine{Rise: 3, Fall: 2}
	steps := []struct {
		pass    bool
		changed bool
		want    State
	}{
		{true, false, Initial}, {true, false, Initial}, {true, true, Healthy}, // rise after 3
		{false, false, Healthy}, {true, false, Healthy}, // a single failure is forgiven
		{false, false, Healthy}, {false, true, Unhealthy}, // fall after 2 in a row
		{false, false, Unhealthy}, {true, false, Unhealthy}, {true, false, Unhealthy},
		{false, false, Unhealthy}, // a failure resets the rise count
		{true, false, Unhealthy}, {true, false, Unhealthy}, {true, true, Healthy},
	}
	for i, s := range steps {
		if got := m.Observe(s.pass); got != s.changed || m.State() != s.want {
			t.Fatalf("step %d (pass=%v): changed=%v state=%v, want changed=%v state=%v", i, s.pass, got, m.State(), s.changed, s.want)
		}
	}
}

func TestMachineInitialToUnhealthy(t *testing.T) {
	m := Machine{Rise: 5, Fall: 2}
	m.Observe(false)
	if m.State() != Initial {
		t.Fatal("one failure left Initial")
	}
	if !m.Observe(false) || m.State() != Unhealthy {
		t.Fatal("two failures did not make an initial target unhealthy")
	}
}

// FuzzMachine: any sequence of results keeps the machine consistent with its
// definition: the state changes only when a run reaches a threshold.
func FuzzMachine(f *testing.F) {
	f.Add([]byte{1, 1, 0, 0, 1}, uint8(2), uint8(3))
	f.Fuzz(func(t *testing.T, results []byte, rise, fall uint8) {
		m := Machine{Rise: int(rise%10) + 1, Fall: int(fall%10) + 1}
		run, last := 0, byte(2)
		for _, r := range results {
			r &= 1
			if r == last {
				run++
			} else {
				run, last = 1, r
			}
			before := m.State()
			changed := m.Observe(r == 1)
			if changed == (before == m.State()) {
				t.Fatal("changed disagrees with the state")
			}
			if changed && r == 1 && (m.State() != Healthy || run < m.Rise) {
				t.Fatalf("became %v after %d passes (rise %d)", m.State(), run, m.Rise)
			}
			if changed && r == 0 && (m.State() != Unhealthy || run < m.Fall) {
				t.Fatalf("became %v after %d failures (fall %d)", m.State(), run, m.Fall)
			}
		}
	})
}
