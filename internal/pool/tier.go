package pool

import (
	"slices"
)

// Tiers: every endpoint has one (Spec.Tier, 0 by default), and a call takes
// a slot on the lowest tier that has a free slot it may use; a higher tier
// gets only the overflow. Within a tier the Picker chooses as it would among
// all endpoints, on a Set of that tier's endpoints alone, with a slot table
// of its own. An endpoint a call may not use (ejected, cooling down, already
// tried) counts as full, so its share spills to the next tier.
//
// A Set whose endpoints share one tier is its own only tier: TryAcquire's
// loop over tiers turns once, and a pick costs what it cost before tiers.

// tiersOf returns the Sets of s's tiers, lowest first: s alone when its
// endpoints share a tier (or it has none), else one new Set per tier,
// holding that tier's endpoints in s's order and counting health with s.
func (p *Pool) tiersOf(s *Set) []*Set {
	if len(s.Eps) == 0 {
		return []*Set{s}
	}
	s.tier = s.Eps[0].Tier()
	levels := []int{s.tier}
	for _, e := range s.Eps[1:] {
		if t := e.Tier(); !slices.Contains(levels, t) {
			levels = append(levels, t)
		}
	}
	if len(levels) == 1 {
		return []*Set{s}
	}
	slices.Sort(levels)
	tiers := make([]*Set, len(levels))
	for k, level := range levels {
		t := &Set{p: p, tier: level, whole: s}
		for _, e := range s.Eps {
			if e.Tier() == level {
				t.Eps = append(t.Eps, e)
			}
		}
		t.tiers = []*Set{t}
		t.index(true)
		tiers[k] = t
	}
	return tiers
}

// Tiers returns the Sets of s's tiers, lowest first; just s when all its
// endpoints are in one tier. Callers must not modify the slice.
func (s *Set) Tiers() []*Set { return s.tiers }

// Tier returns the tier of s's endpoints: of every one of them in a Set of
// one tier; in a Set of several, the lowest.
func (s *Set) Tier() int { return s.tiers[0].tier }
