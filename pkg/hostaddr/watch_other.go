//go:build !linux

package hostaddr

// Watch refreshes s every few seconds until stop is closed; changed is
// called after each change.
func (s *Set) Watch(stop <-chan struct{}, changed func()) { s.poll(stop, changed) }
