// Package balance picks a target for a flow from an immutable, built set of
// targets:
//
//	g, _ := balance.NewGroup(balance.GroupSpec{Name: "web", Targets: targets})
//	key := flowhash.Flow(flowhash.ProtoTCP, client, listenerAddr)
//	prefs := g.Pick(key, buf[:]) // first choice, then retry order
//
// Everything here is computed off the data path; Pick only indexes tables.
package balance
