//! A small SVG line chart, self-contained: series over minutes, the warm-up shaded,
//! dev-server restarts and link cuts marked.

use std::fmt::Write as _;

pub(crate) struct Series {
    pub(crate) name: &'static str,
    pub(crate) color: &'static str,
    pub(crate) points: Vec<(f64, f64)>,
}

/// A self-contained SVG: the series over minutes, the warm-up shaded, restarts as
/// dashed lines and cuts as ticks on the time axis.
pub(crate) fn chart(
    title: &str,
    series: &[Series],
    restarts: &[f64],
    cuts: &[f64],
    warm_up: f64,
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 56.0;
    const RIGHT: f64 = 16.0;
    const TOP: f64 = 28.0;
    const BOTTOM: f64 = 36.0;
    let all = series.iter().flat_map(|s| s.points.iter());
    let t_max = all.clone().map(|p| p.0).fold(1.0_f64, f64::max);
    let (mut lo, mut hi) = all
        .map(|p| p.1)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    // Round steps (1, 2 or 5 times a power of ten), about four of them, around the
    // data with a little room.
    let rough = ((hi - lo) * 1.2).max(1.0) / 4.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power);
    let lo = ((lo - step * 0.1) / step).floor().max(0.0) * step;
    let hi = ((hi + step * 0.1) / step).ceil() * step;
    let decimals = usize::from(step < 1.0);
    let x = |t: f64| LEFT + t / t_max * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#f2f2f2"/>"##,
        x(warm_up.min(t_max)) - LEFT,
        H - TOP - BOTTOM
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="16" font-size="13">{title}</text>"#
    );
    let mut v = lo;
    while v <= hi + step * 1e-6 {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{right:.1}" y1="{at:.1}" y2="{at:.1}" stroke="#ddd"/><text x="{label:.1}" y="{baseline:.1}" text-anchor="end">{v:.decimals$}</text>"##,
            right = W - RIGHT,
            at = y(v),
            label = LEFT - 4.0,
            baseline = y(v) + 4.0
        );
        v += step;
    }
    let minutes = t_max / 60.0;
    let step = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0]
        .into_iter()
        .find(|s| minutes / s <= 8.0)
        .unwrap_or(60.0);
    let mut m = 0.0;
    while m <= minutes + 1e-9 {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{m:.0}</text>"#,
            x(m * 60.0),
            H - BOTTOM + 14.0
        );
        m += step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">minutes (shaded: warm-up; dashed: dev-server restarts; ticks: link cuts)</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 6.0
    );
    for t in restarts {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{1:.1}" stroke="#888" stroke-dasharray="4 3"/>"##,
            x(*t),
            H - BOTTOM
        );
    }
    for t in cuts {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="#e377c2"/>"##,
            x(*t),
            H - BOTTOM - 5.0,
            H - BOTTOM
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            s.color,
            points.join(" ")
        );
        let lx = W - RIGHT - 110.0 * (series.len() - i) as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" x2="{:.1}" y1="16" y2="16" stroke="{}" stroke-width="2"/><text x="{:.1}" y="20">{}</text>"#,
            lx + 16.0,
            s.color,
            lx + 20.0,
            s.name
        );
    }
    svg.push_str("</svg>\n");
    svg
}
