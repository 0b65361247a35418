//! The soak's plot, as SVG written by hand: three panels over one time axis (the proxy's
//! resident memory, its open descriptors, the sessions open), so a leak shows as a line
//! that climbs with churn instead of following the load back down.

use std::fmt::Write;

use super::sample::Sample;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 170.0;
const GAP: f64 = 46.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 56.0;

struct Series<'a> {
    label: &'a str,
    colour: &'a str,
    points: Vec<(f64, f64)>,
}

struct Panel<'a> {
    title: &'a str,
    series: Vec<Series<'a>>,
}

/// The SVG document. `load_end_s` marks when sessions stopped opening (a dashed line).
pub fn svg(title: &str, samples: &[Sample], load_end_s: f64) -> String {
    let pick = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.elapsed_s, v)))
            .collect()
    };
    let panels = [
        Panel {
            title: "resident memory (MiB)",
            series: vec![Series {
                label: "wsgate RSS",
                colour: "#1f77b4",
                points: pick(&|s| s.rss_kib.map(|k| k as f64 / 1024.0)),
            }],
        },
        Panel {
            title: "open file descriptors",
            series: vec![Series {
                label: "wsgate descriptors",
                colour: "#d62728",
                points: pick(&|s| s.fds.map(|n| n as f64)),
            }],
        },
        Panel {
            title: "sessions open",
            series: vec![
                Series {
                    label: "wsgate_sessions_open",
                    colour: "#2ca02c",
                    points: pick(&|s| s.sessions_open),
                },
                Series {
                    label: "the driver's sessions",
                    colour: "#ff7f0e",
                    points: pick(&|s| Some(s.client_active as f64)),
                },
            ],
        },
    ];
    let t_max = samples.iter().map(|s| s.elapsed_s).fold(1.0, f64::max);
    let height = TOP + panels.len() as f64 * (PANEL + GAP) + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="42" fill="#555">time since the first sample; after the dashed line (the end of --duration) sessions close and none opens</text>"##
    );
    for (i, p) in panels.iter().enumerate() {
        let y0 = TOP + i as f64 * (PANEL + GAP) + 16.0;
        panel(&mut out, p, y0, t_max, load_end_s);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, p: &Panel, y0: f64, t_max: f64, load_end_s: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let v_max = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, v)| *v))
        .fold(0.0, f64::max);
    let (step, top) = nice_axis(v_max);
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64| y0 + PANEL - v / top * PANEL;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
        y0 - 6.0,
        p.title
    );
    // Horizontal grid and value labels.
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            label(v)
        );
        v += step;
    }
    // Time ticks, in round seconds or, past five minutes, round minutes.
    let in_minutes = t_max > 300.0;
    let t_step = if in_minutes {
        nice_axis(t_max / 60.0).0 * 60.0
    } else {
        nice_axis(t_max).0
    };
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let xx = x(t);
        let text = if in_minutes {
            format!("{}m", label(t / 60.0))
        } else {
            format!("{}s", label(t))
        };
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#999"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{text}</text>"##,
            y0 + PANEL,
            y0 + PANEL + 4.0,
            y0 + PANEL + 17.0
        );
        t += t_step;
    }
    let xe = x(load_end_s.min(t_max));
    let _ = writeln!(
        out,
        r##"<line x1="{xe:.1}" y1="{y0:.1}" x2="{xe:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="4 3"/>"##,
        y0 + PANEL
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0:.1}" width="{plot_w:.1}" height="{PANEL}" fill="none" stroke="#999"/>"##
    );
    for (j, s) in p.series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"#,
            s.colour,
            pts.join(" ")
        );
        let lx = LEFT + plot_w - 190.0;
        let ly = y0 + 14.0 + j as f64 * 15.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 4.0,
            lx + 18.0,
            ly - 4.0,
            s.colour,
            lx + 24.0,
            escape(s.label)
        );
    }
}

/// A tick step of 1, 2 or 5 times a power of ten giving about five ticks, and the axis top
/// (a multiple of the step at or above `max`).
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (step, (max / step).ceil() * step)
}

fn label(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_axis(4000.0), (1000.0, 4000.0));
        assert_eq!(nice_axis(4100.0), (1000.0, 5000.0));
        assert_eq!(nice_axis(37.0), (10.0, 40.0));
        assert_eq!(nice_axis(1800.0), (500.0, 2000.0));
        assert_eq!(nice_axis(0.0), (0.2, 1.0));
    }

    #[test]
    fn plots_every_series() {
        let samples: Vec<Sample> = (0..4)
            .map(|i| Sample {
                elapsed_s: i as f64 * 10.0,
                rss_kib: Some(10_240 + i * 1024),
                fds: Some(20 + i),
                sessions_open: Some(i as f64),
                client_active: i,
                ..Sample::default()
            })
            .collect();
        let svg = svg("soak <test>", &samples, 25.0);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("soak &lt;test&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        // RSS from 10 to 13 MiB: the last point is at the right edge.
        assert!(svg.contains(&format!("{:.1},", LEFT + WIDTH - LEFT - RIGHT)));
        assert!(svg.contains(">20s</text>"));
        // Half an hour: ticks on round minutes.
        let long = [
            Sample::default(),
            Sample {
                elapsed_s: 1810.0,
                ..Sample::default()
            },
        ];
        let svg = super::svg("long", &long, 1800.0);
        for tick in [">10m<", ">20m<", ">30m<"] {
            assert!(svg.contains(tick), "{tick}");
        }
        assert!(!svg.contains(".3m<"));
    }
}
