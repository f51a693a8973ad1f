package hostaddr

import "time"

// poll refreshes s every five seconds until stop is closed.
func (s *Set) poll(stop <-chan struct{}, changed func()) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if s.Refresh() && changed != nil {
				changed()
			}
		}
	}
}
