//! SVG charts of a run, drawn with plotters: throughput, TTFT and ITL percentiles against the
//! load, and the CDF of end-to-end latency. Each chart is a string of SVG, written to its own
//! file and inlined in the HTML report. Text is left to the viewer's fonts (no font files).

use super::report::LevelReport;
use super::stats::Distribution;
use anyhow::anyhow;
use plotters::prelude::*;

/// Named figures of a level (`("p50", value)`...), one line of a load chart each.
type NamedStats = Vec<(&'static str, Option<f64>)>;

/// One line of a chart.
struct Series {
    name: String,
    color: RGBColor,
    /// Dashed for the compared server, so the two stay apart in greyscale too.
    dashed: bool,
    points: Vec<(f64, f64)>,
}

struct Chart {
    title: String,
    x_desc: String,
    y_desc: String,
    /// Marks each point (load charts; the CDF has too many points).
    markers: bool,
    legend: SeriesLabelPosition,
    series: Vec<Series>,
}

/// The four charts of a run, as (file stem, SVG).
pub fn charts(levels: &[LevelReport]) -> anyhow::Result<Vec<(&'static str, String)>> {
    let servers = server_names(levels);
    let load_axis = if levels.iter().any(|l| l.summary.request_rate.is_some()) {
        "request rate (requests/s)"
    } else {
        "concurrency (clients)"
    };
    let load_chart = |title: &str, y_desc: &str, pick: &dyn Fn(&LevelReport) -> NamedStats| {
        let mut series = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            let of_server: Vec<&LevelReport> = levels
                .iter()
                .filter(|l| &l.summary.server == server)
                .collect();
            let names: Vec<&str> = of_server
                .first()
                .map(|l| pick(l))
                .unwrap_or_default()
                .iter()
                .map(|(n, _)| *n)
                .collect();
            for (which, stat) in names.iter().enumerate() {
                let points = of_server
                    .iter()
                    .filter_map(|l| Some((load_of(l)?, pick(l).get(which)?.1?)))
                    .collect();
                let name = if stat.is_empty() {
                    server.clone()
                } else {
                    format!("{server} {stat}")
                };
                series.push(Series {
                    name,
                    color: shade(index, which),
                    dashed: index > 0,
                    points,
                });
            }
        }
        Chart {
            title: title.into(),
            x_desc: load_axis.into(),
            y_desc: y_desc.into(),
            markers: true,
            legend: SeriesLabelPosition::UpperLeft,
            series,
        }
    };
    let percentiles = |d: Distribution| vec![("p50", d.p50), ("p90", d.p90), ("p99", d.p99)];
    let throughput = load_chart("Output throughput", "output tokens/s", &|l| {
        vec![("", Some(l.summary.output_tokens_per_s))]
    });
    let ttft = load_chart("Time to first token", "TTFT (ms)", &|l| {
        percentiles(l.summary.ttft_ms)
    });
    let itl = load_chart("Inter-token latency", "ITL (ms)", &|l| {
        percentiles(l.summary.itl_ms)
    });
    let mut cdf = Chart {
        title: "End-to-end latency, cumulative".into(),
        x_desc: "end-to-end latency (ms)".into(),
        y_desc: "fraction of requests".into(),
        markers: false,
        legend: SeriesLabelPosition::LowerRight,
        series: Vec::new(),
    };
    for (index, level) in levels.iter().enumerate() {
        let mut latencies = level.completed_e2e_ms();
        latencies.sort_by(f64::total_cmp);
        let n = latencies.len() as f64;
        let points = latencies
            .iter()
            .enumerate()
            .map(|(rank, &ms)| (ms, (rank + 1) as f64 / n))
            .collect();
        let server_index = servers
            .iter()
            .position(|s| s == &level.summary.server)
            .unwrap_or(0);
        cdf.series.push(Series {
            name: format!("{} {}", level.summary.server, level.load_label()),
            color: LEVEL_COLORS[levels_seen(levels, index) % LEVEL_COLORS.len()],
            dashed: server_index > 0,
            points,
        });
    }
    Ok(vec![
        ("throughput", draw(&throughput)?),
        ("ttft", draw(&ttft)?),
        ("itl", draw(&itl)?),
        ("latency_cdf", draw(&cdf)?),
    ])
}

/// Load charts: a hue per server (blue, orange, green), darkest for p50, lightest for p99.
fn shade(server: usize, stat: usize) -> RGBColor {
    const SHADES: [[RGBColor; 3]; 3] = [
        [
            RGBColor(16, 60, 140),
            RGBColor(60, 120, 200),
            RGBColor(130, 170, 230),
        ],
        [
            RGBColor(180, 70, 0),
            RGBColor(230, 120, 20),
            RGBColor(250, 175, 100),
        ],
        [
            RGBColor(20, 110, 40),
            RGBColor(60, 160, 80),
            RGBColor(140, 205, 150),
        ],
    ];
    SHADES[server % SHADES.len()][stat.min(2)]
}

/// The CDF: a colour per load level, shared by the servers (the compared one dashed).
const LEVEL_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Which load level `levels[index]` is, counting levels in run order (servers share one).
fn levels_seen(levels: &[LevelReport], index: usize) -> usize {
    let mut loads: Vec<String> = Vec::new();
    for level in &levels[..=index] {
        let load = level.load_label();
        if !loads.contains(&load) {
            loads.push(load);
        }
    }
    loads.len() - 1
}

fn server_names(levels: &[LevelReport]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for level in levels {
        if !names.contains(&level.summary.server) {
            names.push(level.summary.server.clone());
        }
    }
    names
}

fn load_of(level: &LevelReport) -> Option<f64> {
    level
        .summary
        .concurrency
        .map(|c| c as f64)
        .or(level.summary.request_rate)
}

/// Axis range over the points, padded; a flat or empty set still gets a usable range.
fn range(values: impl Iterator<Item = f64>, from_zero: bool) -> std::ops::Range<f64> {
    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        (low, high) = (low.min(v), high.max(v));
    }
    if !low.is_finite() {
        return 0.0..1.0;
    }
    if from_zero {
        low = low.min(0.0);
    }
    let pad = ((high - low) * 0.05).max(high.abs() * 0.05).max(1e-3);
    (low - if from_zero { 0.0 } else { pad })..(high + pad)
}

fn draw(chart: &Chart) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let failed = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", chart.title);
        let root = SVGBackend::with_string(&mut svg, (860, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        let all = || chart.series.iter().flat_map(|s| s.points.iter());
        let x = range(all().map(|p| p.0), !chart.markers);
        let y = range(all().map(|p| p.1), true);
        let mut plot = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x, y)
            .map_err(|e| failed(&e))?;
        plot.configure_mesh()
            .x_desc(&chart.x_desc)
            .y_desc(&chart.y_desc)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| failed(&e))?;
        for series in &chart.series {
            let color = series.color;
            let style = color.stroke_width(2);
            let legend_style = style;
            if series.dashed {
                plot.draw_series(DashedLineSeries::new(
                    series.points.iter().copied(),
                    8,
                    5,
                    style,
                ))
            } else {
                plot.draw_series(LineSeries::new(series.points.iter().copied(), style))
            }
            .map_err(|e| failed(&e))?
            .label(&series.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], legend_style));
            if chart.markers {
                plot.draw_series(
                    series
                        .points
                        .iter()
                        .map(|&p| Circle::new(p, 4, color.filled())),
                )
                .map_err(|e| failed(&e))?;
            }
        }
        plot.configure_series_labels()
            .position(chart.legend.clone())
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| failed(&e))?;
        root.present().map_err(|e| failed(&e))?;
    }
    Ok(svg)
}
