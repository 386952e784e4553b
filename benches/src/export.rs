//! `qgemm-bench --export DIR`: writes the suite's problems, their data and their
//! reference results, so that the peer script (`benches/peers/peers.py`) runs the same
//! problems on the same bytes and checks every output against the same oracle.
//!
//! ```text
//! DIR/manifest.json         what each problem is; the format is documented in
//!                           benches/peers/README.md
//! DIR/<op>_<shape>.a.u8     activations: GEMM M×K row-major, conv NHWC
//!                           (<shape> is the label with each '/' made '_')
//! DIR/<op>_<shape>.b.i8     weights: GEMM N×K row-major, conv OHWI
//! DIR/<op>_<shape>-u4.b.u4  4-bit weights (`--weights i4,u4`; `-i4`, `.b.i4` for int4):
//!                           each row of K values (a GEMM column, a conv output
//!                           channel) in ceil(K / 2) bytes, the lower index in the low
//!                           nibble; the manifest entry says "weights": "u4" or "i4"
//! DIR/<op>_<shape>.bias.i32 per-column bias, little-endian
//! DIR/<op>_<shape>.<variant> reference results, M×N / NHWC:
//!     .u8_bias  bias, then Float requantization (what qgemm computes in the suite)
//!     .u8       Float requantization without bias (for peers with no i32 bias input)
//!     .i32      the raw accumulators, little-endian
//! ```
//!
//! The suite's requantization is one f32 scale `s`. It is exported as `a_scale = s`,
//! `b_scale = 1`, `y_scale = 1`, so that every peer's `a_scale · b_scale / y_scale`
//! is `s` exactly, whatever order or precision it computes it in.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use crate::{Problem, Shape};

/// Writes `problems` (all of one data kind) into `dir`, creating it. `progress` hears
/// which problem is being written.
pub fn export(dir: &Path, problems: &[Problem], mut progress: impl FnMut(usize, &Problem)) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut entries = Vec::new();
    for (i, problem) in problems.iter().enumerate() {
        progress(i, problem);
        entries.push(write_problem(dir, problem)?);
    }
    let data = problems.first().map_or("full", |p| p.data.name());
    let manifest = format!(
        "{{\n  \"version\": 1,\n  \"data\": \"{data}\",\n  \"problems\": [\n{}\n  ]\n}}\n",
        entries.join(",\n")
    );
    fs::write(dir.join("manifest.json"), manifest)
}

/// Writes one problem's files; returns its manifest entry.
fn write_problem(dir: &Path, problem: &Problem) -> io::Result<String> {
    // A conv spec's '/' would be a directory; specs have no '_', so the stems differ.
    let bits = problem.bits.name();
    let label = problem.shape.label().replace('/', "_");
    let stem = match problem.bits {
        crate::WeightBits::I8 => format!("{}_{label}", problem.shape.op()),
        _ => format!("{}_{label}-{bits}", problem.shape.op()),
    };
    let file = |suffix: &str| format!("{stem}.{suffix}");
    let expected = problem.reference_variants();
    fs::write(dir.join(file("a.u8")), problem.activations())?;
    let b_file = file(&format!("b.{bits}"));
    let b_bytes: Vec<u8> = match problem.bits {
        crate::WeightBits::I8 => problem.weights().iter().map(|&w| w as u8).collect(),
        _ => problem.nibble_weights().to_vec(),
    };
    fs::write(dir.join(&b_file), b_bytes)?;
    fs::write(dir.join(file("bias.i32")), le_bytes(problem.bias()))?;
    fs::write(dir.join(file("u8_bias")), &expected.u8_bias)?;
    fs::write(dir.join(file("u8")), &expected.u8)?;
    fs::write(dir.join(file("i32")), le_bytes(&expected.i32))?;

    let (scale, y_zero_point, _, _) = problem.requantize();
    let mut entry = String::from("    {");
    match &problem.shape {
        Shape::Gemm { m, k, n } => {
            write!(entry, "\"op\": \"gemm\", \"m\": {m}, \"k\": {k}, \"n\": {n}, \"b_layout\": \"NxK\", ").unwrap();
        }
        Shape::Conv { params: p, .. } => {
            write!(
                entry,
                "\"op\": \"conv\", \"batch\": {}, \"in_height\": {}, \"in_width\": {}, \"in_channels\": {}, \
                 \"out_channels\": {}, \"kernel_height\": {}, \"kernel_width\": {}, \"stride\": [{}, {}], \
                 \"dilation\": [{}, {}], \"padding\": [{}, {}, {}, {}], \"groups\": {}, \"out_height\": {}, \
                 \"out_width\": {}, \"b_layout\": \"OHWI\", ",
                p.batch,
                p.in_height,
                p.in_width,
                p.in_channels,
                p.out_channels,
                p.kernel_height,
                p.kernel_width,
                p.stride_height,
                p.stride_width,
                p.dilation_height,
                p.dilation_width,
                p.pad_top,
                p.pad_left,
                p.pad_bottom,
                p.pad_right,
                p.groups,
                p.out_height().expect("suite shapes fit"),
                p.out_width().expect("suite shapes fit"),
            )
            .unwrap();
        }
    }
    // `{:?}` of an f32 prints the shortest decimal that reads back as the same f32.
    write!(
        entry,
        "\"shape\": \"{}\", \"weights\": \"{bits}\", \"ops\": {}, \"a\": \"{}\", \"a_zero_point\": {}, \"b\": \"{}\", \"b_zero_point\": {}, \
         \"bias\": \"{}\", \"a_scale\": {:?}, \"b_scale\": 1.0, \"y_scale\": 1.0, \"y_zero_point\": {}, \
         \"expected\": {{\"u8_bias\": \"{}\", \"u8\": \"{}\", \"i32\": \"{}\"}}}}",
        problem.shape.label(),
        problem.shape.ops(),
        file("a.u8"),
        problem.activation_zero_point(),
        b_file,
        problem.weight_zero_point(),
        file("bias.i32"),
        scale,
        y_zero_point,
        file("u8_bias"),
        file("u8"),
        file("i32"),
    )
    .unwrap();
    Ok(entry)
}

fn le_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
