package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// WriteSVG draws a run: its rate for each second of the window, and, for
// the scenarios that time requests, the latency by percentile, on an axis
// spread by nines (50, 90, 99, 99.9, ...) as HDR histograms are plotted.
func WriteSVG(w io.Writer, r *Result) error {
	const W, H, pad = 720, 300, 56
	panels := 1
	if len(r.Percentiles) > 0 {
		panels = 2
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", W, H*panels)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	unit := "operations/s"
	if r.Scenario == TCPThroughput {
		unit = "writes/s"
	}
	// Panel 1: the rate, second by second.
	title := fmt.Sprintf("%s to %s: %s per second of the run", r.Scenario, r.Addr, unit)
	axes(&b, 0, W, H, pad, title)
	maxRate := 0.0
	for _, v := range r.Timeline {
		maxRate = math.Max(maxRate, v)
	}
	if n := len(r.Timeline); n > 0 && maxRate > 0 {
		bw := float64(W-2*pad) / float64(n)
		for i, v := range r.Timeline {
			h := v / maxRate * float64(H-2*pad)
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#1f77b4"/>`+"\n",
				float64(pad)+float64(i)*bw+1, float64(H-pad)-h, math.Max(bw-2, 1), h)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%.0f</text>`+"\n", pad-4, pad+4, maxRate)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">seconds (%d)</text>`+"\n", W/2, H-pad+20, n)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">0</text>`+"\n", pad-4, H-pad+4)
	// Panel 2: latency by percentile.
	if panels == 2 {
		y0 := H
		axes(&b, y0, W, H, pad, fmt.Sprintf("%s: latency by percentile (us)", r.Scenario))
		nines := func(p float64) float64 { return math.Log10(1 / math.Max(1-p/100, 1e-5)) } // 50 → 0.3, 99 → 2, 99.99 → 4
		maxX := nines(99.999)
		maxY := 0.0
		for _, p := range r.Percentiles {
			maxY = math.Max(maxY, p.Micros)
		}
		if maxY > 0 {
			var pts []string
			for _, p := range r.Percentiles {
				x := float64(pad) + nines(math.Min(p.Percentile, 99.999))/maxX*float64(W-2*pad)
				y := float64(y0+H-pad) - p.Micros/maxY*float64(H-2*pad)
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="#d62728" stroke-width="2"/>`+"\n", strings.Join(pts, " "))
			for _, q := range []float64{50, 90, 99, 99.9, 99.99} {
				x := float64(pad) + nines(q)/maxX*float64(W-2*pad)
				fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">p%g</text>`+"\n", x, y0+H-pad+16, q)
			}
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%.0f</text>`+"\n", pad-4, y0+pad+4, maxY)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">0</text>`+"\n", pad-4, y0+H-pad+4)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// axes draws a panel's title and its two axes, the panel starting at y0.
func axes(b *strings.Builder, y0, W, H, pad int, title string) {
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle" font-size="14">%s</text>`+"\n", W/2, y0+pad/2, escape(title))
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", pad, y0+pad, pad, y0+H-pad)
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", pad, y0+H-pad, W-pad, y0+H-pad)
}

func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
