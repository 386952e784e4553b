//! The comparison: qgemm's measurements beside its peers', as a terminal table, a
//! markdown report and an SVG bar chart per suite and thread count.
//!
//! Every measurement carries its own correctness check: qgemm's against the reference
//! byte for byte, each peer's against the reference result of the same problem in the
//! form the peer computes (see `export`). A peer that got any output wrong in a table
//! is listed among the *inexact* peers of that table; on AVX2 CPUs that is typically
//! the `vpmaddubsw` saturation of ONNX Runtime (MLAS) and PyTorch (FBGEMM, oneDNN).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor;

/// One row of the comparison: one implementation on one problem at one thread count.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// `gemm` or `conv`.
    pub suite: String,
    /// The shape's label (`1024x1024x1024`, `r50_3x3`, `1x56x56x128/128/3x3/s2/p1`).
    pub shape: String,
    /// Threads it ran on.
    pub threads: usize,
    /// `full` or `7bit`.
    pub data: String,
    /// The weights' element type: `i8`, `i4` or `u4`.
    pub weights: String,
    /// A short id: `qgemm avx2`, `ort-qlinearmatmul`, `rten-gemm`.
    pub id: String,
    /// A human name, with the kernel where known.
    pub name: String,
    /// The library and version.
    pub library: String,
    /// Whether this is qgemm itself.
    pub is_qgemm: bool,
    /// The timing and check, or why the implementation could not run the problem.
    pub result: Result<Timing, String>,
}

/// A timed, checked run.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Median milliseconds per run.
    pub ms: f64,
    /// Operations (2·MACs) per second, in billions.
    pub gops: f64,
    /// Output elements that differ from the reference.
    pub wrong: u64,
    /// Output elements.
    pub total: u64,
    /// The largest difference from the reference, in output units: 1 is a rounding
    /// difference, hundreds or more is saturation or a different computation.
    pub max_abs_diff: i64,
    /// The most scratch one thread held (qgemm's workspace), where known.
    pub scratch_bytes: Option<u64>,
    /// Whether the outputs were compared with the reference at all: a peer whose
    /// results are float (ONNX Runtime's `MatMulNBits`, which also quantizes A itself)
    /// is timed only.
    pub checked: bool,
}

impl Measurement {
    /// Reads one line of the peer script's output.
    pub fn from_peer_json(line: &str) -> Result<Measurement, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
        let text = |key: &str| v[key].as_str().map(str::to_string).ok_or_else(|| format!("no \"{key}\" in {line}"));
        let number = |key: &str| v[key].as_f64().ok_or_else(|| format!("no number \"{key}\" in {line}"));
        let result = match v["skipped"].as_str() {
            Some(reason) => Err(reason.to_string()),
            None => Ok(Timing {
                ms: number("ms")?,
                gops: number("gops")?,
                wrong: number("wrong")? as u64,
                total: number("total")? as u64,
                max_abs_diff: v["max_abs_diff"].as_f64().unwrap_or(0.0) as i64,
                scratch_bytes: v["scratch_bytes"].as_u64(),
                checked: !v["unchecked"].as_bool().unwrap_or(false),
            }),
        };
        Ok(Measurement {
            suite: text("op")?,
            shape: text("shape")?,
            threads: number("threads")? as usize,
            data: text("data")?,
            weights: v["weights"].as_str().unwrap_or("i8").to_string(),
            id: text("peer")?,
            name: text("name")?,
            library: text("library")?,
            is_qgemm: false,
            result,
        })
    }

    /// One JSON line, in the peer script's format plus `"qgemm"`.
    pub fn json(&self) -> String {
        let mut v = serde_json::json!({
            "op": self.suite, "shape": self.shape, "threads": self.threads, "data": self.data,
            "weights": self.weights, "peer": self.id, "name": self.name, "library": self.library, "qgemm": self.is_qgemm,
        });
        match &self.result {
            Ok(t) => {
                v["ms"] = t.ms.into();
                v["gops"] = t.gops.into();
                v["wrong"] = t.wrong.into();
                v["total"] = t.total.into();
                v["max_abs_diff"] = t.max_abs_diff.into();
                if let Some(b) = t.scratch_bytes {
                    v["scratch_bytes"] = b.into();
                }
                if !t.checked {
                    v["unchecked"] = true.into();
                }
            }
            Err(reason) => v["skipped"] = reason.as_str().into(),
        }
        v.to_string()
    }

    fn gops(&self) -> Option<f64> {
        self.result.as_ref().ok().map(|t| t.gops)
    }

    fn wrong(&self) -> u64 {
        self.result.as_ref().map_or(0, |t| t.wrong)
    }
}

/// The measurements of one suite at one thread count on one data kind: one table and
/// one chart.
#[derive(Debug)]
pub struct Table<'a> {
    /// `gemm` or `conv`.
    pub suite: &'a str,
    /// Threads.
    pub threads: usize,
    /// Data kind.
    pub data: &'a str,
    /// The weights' element type.
    pub weights: &'a str,
    /// Shapes, in suite order.
    pub shapes: Vec<&'a str>,
    /// Columns: qgemm's ISAs, then the exact peers, then the inexact ones.
    pub columns: Vec<Column<'a>>,
    rows: Vec<&'a Measurement>,
}

/// One implementation's column.
#[derive(Debug)]
pub struct Column<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its human name and library.
    pub name: &'a str,
    /// Its library.
    pub library: &'a str,
    /// qgemm or a peer.
    pub is_qgemm: bool,
    /// Whether any of its outputs in this table was wrong.
    pub inexact: bool,
}

impl<'a> Table<'a> {
    /// Splits `all` into tables, one per (suite, threads, data, weights), in order of
    /// appearance: peers are compared with qgemm on weights of the same type.
    pub fn split(all: &'a [Measurement]) -> Vec<Table<'a>> {
        let mut keys: Vec<(&str, usize, &str, &str)> = Vec::new();
        for m in all {
            let key = (m.suite.as_str(), m.threads, m.data.as_str(), m.weights.as_str());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys.into_iter().map(|(suite, threads, data, weights)| Table::new(all, suite, threads, data, weights)).collect()
    }

    fn new(all: &'a [Measurement], suite: &'a str, threads: usize, data: &'a str, weights: &'a str) -> Table<'a> {
        let rows: Vec<&Measurement> = all
            .iter()
            .filter(|m| m.suite == suite && m.threads == threads && m.data == data && m.weights == weights)
            .collect();
        let mut shapes: Vec<&str> = Vec::new();
        let mut columns: Vec<Column> = Vec::new();
        for m in &rows {
            if !shapes.contains(&m.shape.as_str()) {
                shapes.push(&m.shape);
            }
            match columns.iter_mut().find(|c| c.id == m.id) {
                Some(c) => c.inexact |= m.wrong() > 0,
                None => columns.push(Column {
                    id: &m.id,
                    name: &m.name,
                    library: &m.library,
                    is_qgemm: m.is_qgemm,
                    inexact: m.wrong() > 0,
                }),
            }
        }
        // qgemm first, then exact peers, then inexact ones; stable within each group.
        columns.sort_by_key(|c| (!c.is_qgemm, c.inexact));
        Table { suite, threads, data, weights, shapes, columns, rows }
    }

    fn get(&self, shape: &str, id: &str) -> Option<&'a Measurement> {
        self.rows.iter().copied().find(|m| m.shape == shape && m.id == id)
    }

    /// qgemm's best exact figure on `shape` (the ratio's numerator).
    fn best_qgemm(&self, shape: &str) -> Option<f64> {
        self.rows
            .iter()
            .filter(|m| m.is_qgemm && m.shape == shape && m.wrong() == 0)
            .filter_map(|m| m.gops())
            .max_by(f64::total_cmp)
    }

    /// The title: `GEMM, 1 thread, full-range data`.
    pub fn title(&self) -> String {
        let suite = if self.suite == "gemm" { "GEMM" } else { "Convolution (NHWC)" };
        let threads = if self.threads == 1 { "1 thread".to_string() } else { format!("{} threads", self.threads) };
        let data = if self.data == "7bit" { "7-bit activations" } else { "full-range data" };
        match self.weights {
            "i8" => format!("{suite}, {threads}, {data}"),
            w => format!("{suite}, {threads}, {data}, {} weights", weights_name(w)),
        }
    }

    /// A file stem: `gemm-1t-full` (with `-i4` or `-u4` for 4-bit weights).
    pub fn stem(&self) -> String {
        match self.weights {
            "i8" => format!("{}-{}t-{}", self.suite, self.threads, self.data),
            w => format!("{}-{}t-{}-{w}", self.suite, self.threads, self.data),
        }
    }

    /// The table as a grid of cells, header first. `markdown` picks the cell wording.
    fn grid(&self, markdown: bool) -> Vec<Vec<String>> {
        let mut header = vec!["shape".to_string()];
        for c in &self.columns {
            let mark = if c.is_qgemm || !c.inexact { "" } else { " (inexact)" };
            header.push(format!("{}{mark}", c.id));
        }
        let mut grid = vec![header];
        for &shape in &self.shapes {
            let best = self.best_qgemm(shape);
            let mut row = vec![shape.to_string()];
            for c in &self.columns {
                row.push(Self::cell(self.get(shape, c.id), best, markdown));
            }
            grid.push(row);
        }
        grid
    }

    fn cell(m: Option<&Measurement>, best_qgemm: Option<f64>, markdown: bool) -> String {
        let Some(m) = m else { return "–".into() };
        let t = match &m.result {
            Ok(t) => t,
            Err(_) => return if markdown { "skipped¹".into() } else { "skipped".into() },
        };
        let mut cell = fmt_gops(t.gops);
        if let (false, Some(best)) = (m.is_qgemm, best_qgemm) {
            write!(cell, " ({:.2}×)", best / t.gops).unwrap();
        }
        if !t.checked {
            cell.push_str(if markdown { " (time only²)" } else { " (time only)" });
        }
        if t.wrong > 0 {
            let (wrong, total, off) = (t.wrong, t.total, t.max_abs_diff);
            if markdown {
                write!(cell, " **{wrong}/{total} wrong, up to {off} off**").unwrap();
            } else {
                write!(cell, " {wrong}/{total} wrong ≤{off}").unwrap();
            }
        }
        cell
    }

    /// The table aligned for a terminal.
    pub fn text(&self) -> String {
        format!("{}: GOPS (best qgemm / peer); wrong outputs\n{}", self.title(), aligned(&self.grid(false)))
    }

    /// The table in markdown, with its notes.
    pub fn markdown(&self) -> String {
        let mut out = markdown_rows(&self.grid(true));
        out.push('\n');
        for c in &self.columns {
            let class = if c.is_qgemm {
                "qgemm, checked byte for byte against the reference"
            } else if c.inexact {
                "**inexact**: wrong outputs on this data"
            } else if !self.rows.iter().any(|m| m.id == c.id && m.result.is_ok()) {
                "skipped on every shape here"
            } else if self.rows.iter().any(|m| m.id == c.id && m.result.as_ref().is_ok_and(|t| !t.checked)) {
                "timed only²: its outputs are float, from activations it quantizes itself, so they are not \
                 compared with qgemm's bytes"
            } else {
                "exact on every shape here"
            };
            out.push_str(&format!("- `{}`: {} ({}); {class}.\n", c.id, c.name, c.library));
        }
        let skipped: BTreeSet<String> = self
            .rows
            .iter()
            .filter_map(|m| m.result.as_ref().err().map(|why| format!("`{}` on {}: {why}", m.id, m.shape)))
            .collect();
        if !skipped.is_empty() {
            out.push_str("\n¹ Skipped:\n");
            for s in skipped {
                out.push_str(&format!("- {s}\n"));
            }
        }
        out
    }

    /// Draws the bar chart: one group of bars per shape, one bar per implementation,
    /// log-scale GOPS. A bar is filled when that result is exact and hollow when not.
    pub fn chart(&self, path: &Path) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let bars: Vec<&Column> = self.columns.iter().collect();
        // Each group as wide as its bars or as the longest label (a conv spec such as
        // `1x112x112x96/96/3x3/s2/p1/g96`; about 7 px a character at 13 px, and a
        // margin for the axes' share of the width).
        let label = self.shapes.iter().map(|s| s.chars().count()).max().unwrap_or(0);
        let group = (bars.len() * 14 + 30).max(label * 7 + 40);
        let width = (180 + self.shapes.len() * group).max(700) as u32;
        let root = SVGBackend::new(path, (width, 580)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let title = format!("{}: GOPS (log scale)", self.title());
        let body = root.titled(&title, ("sans-serif", 18)).map_err(|e| err(&e))?;
        let (plot_area, legend_area) = body.split_horizontally(width - 250);

        let max = self.rows.iter().filter_map(|m| m.gops()).fold(1.0, f64::max);
        let min = self.rows.iter().filter_map(|m| m.gops()).fold(max, f64::min);
        let y_range = (min / 2.0).min(1.0)..max * 1.6;
        let n = self.shapes.len() as f64;
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..n, y_range.clone().log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("GOPS")
            .y_label_formatter(&|v| format!("{v}"))
            .draw()
            .map_err(|e| err(&e))?;

        let slot = 0.8 / bars.len() as f64;
        for (b, column) in bars.iter().enumerate() {
            let rects = self.shapes.iter().enumerate().filter_map(|(s, shape)| {
                let m = self.get(shape, column.id)?;
                let x0 = s as f64 + 0.1 + b as f64 * slot;
                let style = bar_style(column, m.wrong() > 0);
                Some(Rectangle::new([(x0, y_range.start), (x0 + slot * 0.9, m.gops()?)], style))
            });
            chart.draw_series(rects).map_err(|e| err(&e))?;
        }
        // The shape names under each group, placed in pixels from the chart's coordinates.
        for (s, shape) in self.shapes.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(s as f64 + 0.5, y_range.start));
            let style = TextStyle::from(("sans-serif", 13))
                .pos(text_anchor::Pos::new(text_anchor::HPos::Center, text_anchor::VPos::Top));
            plot_area.draw(&Text::new(shape.to_string(), (x, y + 8), style)).map_err(|e| err(&e))?;
        }
        self.legend(&legend_area, &bars).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))
    }

    fn legend<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
        bars: &[&Column],
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let font = ("sans-serif", 13);
        area.draw(&Text::new("filled: exact", (10, 50), font))?;
        area.draw(&Text::new("hollow: wrong outputs on that shape", (10, 68), font))?;
        for (b, column) in bars.iter().enumerate() {
            let y = 100 + 22 * b as i32;
            area.draw(&Rectangle::new([(10, y), (28, y + 14)], bar_style(column, column.inexact)))?;
            let mark = if column.inexact { " (inexact)" } else { "" };
            area.draw(&Text::new(format!("{}{mark}", column.id), (36, y), font))?;
        }
        Ok(())
    }
}

/// A grid of cells, header first, aligned for a terminal: the first column left, the
/// others right, one line per row.
fn aligned(grid: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..grid[0].len()).map(|col| grid.iter().map(|r| r[col].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in grid {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| if i == 0 { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A grid of cells, header first, as markdown table rows.
fn markdown_rows(grid: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (i, row) in grid.iter().enumerate() {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
        if i == 0 {
            out.push_str(&format!("|{}\n", "---|".repeat(row.len())));
        }
    }
    out
}

/// `int4` for `i4`, `uint4` for `u4`.
fn weights_name(weights: &str) -> &str {
    match weights {
        "i4" => "int4",
        "u4" => "uint4",
        "i8" => "int8",
        other => other,
    }
}

/// qgemm with 4-bit weights beside qgemm with int8 weights: per (suite, threads,
/// data), each shape's best exact qgemm GOPS for each weight type, and the 4-bit
/// figures as multiples of the int8 one. `None` when only one weight type was run.
pub fn weights_comparison(all: &[Measurement], markdown: bool) -> Option<String> {
    let mut kinds: Vec<&str> = Vec::new();
    let mut keys: Vec<(&str, usize, &str)> = Vec::new();
    for m in all.iter().filter(|m| m.is_qgemm) {
        if !kinds.contains(&m.weights.as_str()) {
            kinds.push(&m.weights);
        }
        let key = (m.suite.as_str(), m.threads, m.data.as_str());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if kinds.len() < 2 {
        return None;
    }
    let best = |suite: &str, threads: usize, data: &str, shape: &str, weights: &str| {
        all.iter()
            .filter(|m| m.is_qgemm && m.suite == suite && m.threads == threads && m.data == data)
            .filter(|m| m.shape == shape && m.weights == weights && m.wrong() == 0)
            .filter_map(|m| m.gops())
            .max_by(f64::total_cmp)
    };
    let mut out = String::new();
    for (suite, threads, data) in keys {
        let threads_text = if threads == 1 { "1 thread".to_string() } else { format!("{threads} threads") };
        let title = format!("qgemm by weight type, {suite}, {threads_text}, {data} data: best ISA's GOPS (× int8)");
        let mut grid = vec![
            std::iter::once("shape".to_string())
                .chain(kinds.iter().map(|w| weights_name(w).into()))
                .collect::<Vec<_>>(),
        ];
        let mut shapes: Vec<&str> = Vec::new();
        for m in all.iter().filter(|m| m.is_qgemm && m.suite == suite && m.threads == threads && m.data == data) {
            if !shapes.contains(&m.shape.as_str()) {
                shapes.push(&m.shape);
            }
        }
        for shape in shapes {
            let base = best(suite, threads, data, shape, "i8");
            let mut row = vec![shape.to_string()];
            for w in &kinds {
                row.push(match (best(suite, threads, data, shape, w), base) {
                    (Some(g), Some(b)) if *w != "i8" => format!("{} ({:.2}×)", fmt_gops(g), g / b),
                    (Some(g), _) => fmt_gops(g),
                    (None, _) => "–".into(),
                });
            }
            grid.push(row);
        }
        if markdown {
            out.push_str(&format!("\n## {title}\n\n{}", markdown_rows(&grid)));
        } else {
            out.push_str(&format!("\n{title}\n{}", aligned(&grid)));
        }
    }
    Some(out)
}

/// GOPS with three significant digits or one decimal, whichever shows more.
fn fmt_gops(gops: f64) -> String {
    if gops >= 10.0 {
        format!("{gops:.1}")
    } else if gops >= 1.0 {
        format!("{gops:.2}")
    } else {
        format!("{gops:.3}")
    }
}

/// A bar's colour, the same for an implementation in every chart (qgemm dark, peers
/// from a palette by id), filled when exact and hollow when `wrong`.
fn bar_style(column: &Column, wrong: bool) -> ShapeStyle {
    const PEERS: [&str; 10] = [
        "rten-gemm",
        "tract-linalg",
        "ort-qlinearmatmul",
        "ort-matmulinteger",
        "ort-qlinearconv",
        "ort-qlinearconv-nhwc",
        "torch-fbgemm",
        "torch-x86",
        "torch-onednn",
        "xnnpack",
    ];
    let fnv = |s: &str| s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let color = if column.is_qgemm {
        const QGEMM: [RGBColor; 4] =
            [RGBColor(20, 30, 90), RGBColor(40, 90, 170), RGBColor(0, 130, 120), RGBColor(90, 90, 90)];
        QGEMM[fnv(column.id) as usize % QGEMM.len()].to_rgba()
    } else {
        // Tableau's ten colours, minus its blue (qgemm's family), and a gold: distinct,
        // and dark enough to read as an outline.
        const PALETTE: [RGBColor; 10] = [
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
            RGBColor(188, 189, 34),
            RGBColor(23, 190, 207),
            RGBColor(127, 127, 127),
            RGBColor(230, 171, 2),
        ];
        let index = PEERS.iter().position(|&p| p == column.id).unwrap_or(fnv(column.id) as usize);
        PALETTE[index % PALETTE.len()].to_rgba()
    };
    if wrong { color.stroke_width(2) } else { color.filled() }
}

/// Writes `DIR/report.md`, one SVG chart per table, and `DIR/results.jsonl` (every
/// measurement). `header` goes at the top of the markdown (machine, command, date).
pub fn write(dir: &Path, header: &str, all: &[Measurement]) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut md = String::from(header);
    let mut written = Vec::new();
    for table in Table::split(all) {
        let svg = format!("{}.svg", table.stem());
        table.chart(&dir.join(&svg))?;
        written.push(svg.clone());
        md.push_str(&format!(
            "\n## {}\n\nGOPS; in brackets, qgemm's best exact figure divided by the peer's.\n\n",
            table.title()
        ));
        md.push_str(&table.markdown());
        md.push_str(&format!("\n![{}]({svg})\n", table.title()));
    }
    if let Some(comparison) = weights_comparison(all, true) {
        md.push_str(&comparison);
    }
    if all.iter().any(|m| m.result.as_ref().is_ok_and(|t| !t.checked)) {
        md.push_str(
            "\n² Timed only: ONNX Runtime's `MatMulNBits` quantizes the activations itself (in blocks) and returns \
             float, so its outputs cannot be compared with qgemm's bytes; it is compared for time alone, on the same \
             4-bit weights (uint4, one block of K per column, accuracy level 4: int8 compute).\n",
        );
    }
    let jsonl: String = all.iter().map(|m| m.json() + "\n").collect();
    for (name, contents) in [("report.md", md), ("results.jsonl", jsonl)] {
        std::fs::write(dir.join(name), contents).map_err(|e| format!("{}: {e}", dir.join(name).display()))?;
        written.push(name.to_string());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(id: &str, is_qgemm: bool, shape: &str, gops: f64, wrong: u64) -> Measurement {
        Measurement {
            suite: "gemm".into(),
            shape: shape.into(),
            threads: 1,
            data: "full".into(),
            weights: "i8".into(),
            id: id.into(),
            name: id.into(),
            library: "lib 1".into(),
            is_qgemm,
            result: Ok(Timing {
                ms: 1.0,
                gops,
                wrong,
                total: 100,
                max_abs_diff: if wrong > 0 { 3 } else { 0 },
                scratch_bytes: None,
                checked: true,
            }),
        }
    }

    #[test]
    fn ratios_and_classes() {
        let all = vec![
            measurement("qgemm avx2", true, "a", 100.0, 0),
            measurement("sat", false, "a", 200.0, 7),
            measurement("exact", false, "a", 50.0, 0),
            measurement("qgemm avx2", true, "b", 10.0, 0),
            measurement("sat", false, "b", 20.0, 0),
        ];
        let tables = Table::split(&all);
        assert_eq!(tables.len(), 1);
        let t = &tables[0];
        let ids: Vec<&str> = t.columns.iter().map(|c| c.id).collect();
        assert_eq!(ids, ["qgemm avx2", "exact", "sat"], "qgemm, then exact peers, then inexact ones");
        let grid = t.grid(false);
        assert_eq!(grid[0], ["shape", "qgemm avx2", "exact", "sat (inexact)"]);
        assert_eq!(grid[1], ["a", "100.0", "50.0 (2.00×)", "200.0 (0.50×) 7/100 wrong ≤3"]);
        assert_eq!(grid[2], ["b", "10.0", "–", "20.0 (0.50×)"]);
    }

    #[test]
    fn peer_json_round_trips() {
        let line = r#"{"peer":"ort-qlinearmatmul","name":"ONNX Runtime QLinearMatMul","library":"onnxruntime 1.32.0","op":"gemm","shape":"4x4x4","threads":2,"data":"7bit","ms":0.5,"gops":3.25,"runs":9,"checked_against":"u8","wrong":3,"total":16,"max_abs_diff":1}"#;
        let m = Measurement::from_peer_json(line).unwrap();
        assert_eq!((m.id.as_str(), m.threads, m.data.as_str()), ("ort-qlinearmatmul", 2, "7bit"));
        let t = m.result.as_ref().unwrap();
        assert_eq!((t.gops, t.wrong, t.total, t.max_abs_diff), (3.25, 3, 16, 1));
        let again = Measurement::from_peer_json(&m.json()).unwrap();
        assert_eq!(again.result.unwrap().wrong, 3);

        let skipped = r#"{"peer":"torch-onednn","name":"n","library":"l","op":"conv","shape":"c","threads":1,"data":"full","skipped":"asymmetric padding"}"#;
        assert_eq!(Measurement::from_peer_json(skipped).unwrap().result.unwrap_err(), "asymmetric padding");
        assert!(Measurement::from_peer_json("{\"peer\": 1}").is_err());
    }

    #[test]
    fn a_peer_skipped_everywhere_is_not_called_exact() {
        let mut skipped = measurement("skipper", false, "a", 1.0, 0);
        skipped.result = Err("asymmetric padding".into());
        let all =
            vec![measurement("qgemm avx2", true, "a", 100.0, 0), measurement("exact", false, "a", 50.0, 0), skipped];
        let md = Table::split(&all)[0].markdown();
        assert!(md.contains("`exact`: exact (lib 1); exact on every shape here."), "{md}");
        assert!(md.contains("`skipper`: skipper (lib 1); skipped on every shape here."), "{md}");
        assert!(md.contains("- `skipper` on a: asymmetric padding"), "{md}");
    }

    #[test]
    fn the_chart_widens_for_long_labels() {
        let dir = std::env::temp_dir().join(format!("qgemm-report-width-test-{}", std::process::id()));
        let label = "1x112x112x96/96/3x3/s2/p1/g96";
        let all: Vec<Measurement> =
            (0..6).map(|i| measurement("qgemm avx2", true, &format!("{label}{i}"), 10.0, 0)).collect();
        write(&dir, "", &all).unwrap();
        let svg = std::fs::read_to_string(dir.join("gemm-1t-full.svg")).unwrap();
        let width: usize = svg.split("width=\"").nth(1).and_then(|w| w.split('"').next()).unwrap().parse().unwrap();
        assert!(width >= 6 * (label.len() + 1) * 7, "the chart is {width} px wide for six {label:?} labels");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_markdown_and_svg() {
        let dir = std::env::temp_dir().join(format!("qgemm-report-test-{}", std::process::id()));
        let all = vec![measurement("qgemm avx2", true, "a", 100.0, 0), measurement("sat", false, "a", 200.0, 7)];
        let files = write(&dir, "# header\n", &all).unwrap();
        assert_eq!(files, ["gemm-1t-full.svg", "report.md", "results.jsonl"]);
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains("| a | 100.0 | 200.0 (0.50×) **7/100 wrong, up to 3 off** |"), "{md}");
        let svg = std::fs::read_to_string(dir.join("gemm-1t-full.svg")).unwrap();
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split('>').nth(1))
            .map(|t| t.trim_end_matches("</text").trim())
            .collect();
        for expected in ["qgemm avx2", "sat (inexact)", "a", "filled: exact"] {
            assert!(texts.contains(&expected), "{expected:?} not among the chart's texts {texts:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
