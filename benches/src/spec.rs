//! The convolution spec of `--shapes conv:SPEC`: any NHWC convolution written out,
//!
//! ```text
//! NxHxWxC/OC/KHxKW[/sS][/pP][/dD][/gG]
//! ```
//!
//! batch × input height × input width × input channels, output channels, kernel
//! height × width, then options in any order, each at most once:
//!
//! - `sS`: stride, one value for both axes or `AxB` (vertical × horizontal); default 1;
//! - `pP`: padding, one value for all four sides or `TxLxBxR` (top, left, bottom,
//!   right); default 0;
//! - `dD`: dilation, one value or `AxB` like the stride; default 1;
//! - `gG`: channel groups, dividing C and OC (`G = C = OC` is depthwise); default 1.
//!
//! [`conv_spec`] writes a convolution back in its canonical form (options in the order
//! s, p, d, g, defaults left out, equal values written once), which
//! [`parse_conv_spec`] reads back as the same convolution.

use qgemm::Conv2dParams;

/// The syntax, for error messages and help.
pub const CONV_SPEC_SYNTAX: &str = "NxHxWxC/OC/KHxKW[/sS][/pP][/dD][/gG]";

/// Reads a convolution spec (without the `conv:` prefix). The error says what is wrong
/// with it; the caller names the item.
pub fn parse_conv_spec(spec: &str) -> Result<Conv2dParams, String> {
    let parts: Vec<&str> = spec.split('/').collect();
    if parts.len() < 3 {
        let missing = if parts.len() == 1 { "the output channels and the kernel size" } else { "the kernel size" };
        return Err(format!("missing {missing}; expected {CONV_SPEC_SYNTAX}"));
    }
    let [batch, in_height, in_width, in_channels] = sizes(parts[0], "the input NxHxWxC", 1)?;
    let [out_channels] = sizes(parts[1], "the output channels OC", 1)?;
    let [kernel_height, kernel_width] = sizes(parts[2], "the kernel KHxKW", 1)?;
    let mut p =
        Conv2dParams::new([batch, in_height, in_width, in_channels], out_channels, [kernel_height, kernel_width]);

    let mut seen = Vec::new();
    for option in &parts[3..] {
        let mut chars = option.chars();
        let letter = chars.next().ok_or("empty option (two '/' in a row, or a '/' at the end)")?;
        let value = chars.as_str();
        if !"spdg".contains(letter) {
            return Err(format!(
                "unknown option {option:?}: expected sS (stride), pP (padding), dD (dilation) or gG (groups)"
            ));
        }
        if seen.contains(&letter) {
            return Err(format!("option {letter} given twice"));
        }
        seen.push(letter);
        match letter {
            's' => [p.stride_height, p.stride_width] = pair(value, "the stride s")?,
            'd' => [p.dilation_height, p.dilation_width] = pair(value, "the dilation d")?,
            'g' => [p.groups] = sizes(value, "the groups g", 1)?,
            _ => {
                [p.pad_top, p.pad_left, p.pad_bottom, p.pad_right] = match value.split('x').count() {
                    1 => [sizes::<1>(value, "the padding p", 0)?[0]; 4],
                    4 => sizes(value, "the padding pTxLxBxR", 0)?,
                    n => {
                        return Err(format!(
                            "the padding p{value} has {n} values; expected one for all sides or TxLxBxR (top, left, \
                             bottom, right)"
                        ));
                    }
                }
            }
        }
    }

    for (what, channels) in [("input", p.in_channels), ("output", p.out_channels)] {
        if channels % p.groups != 0 {
            return Err(format!("{channels} {what} channels do not split into {} groups", p.groups));
        }
    }
    let axes = [
        ("height", p.in_height, p.pad_top, p.pad_bottom, p.kernel_height, p.dilation_height),
        ("width", p.in_width, p.pad_left, p.pad_right, p.kernel_width, p.dilation_width),
    ];
    for (axis, input, before, after, kernel, dilation) in axes {
        let padded = input.checked_add(before).and_then(|x| x.checked_add(after));
        let extent = (kernel - 1).checked_mul(dilation).and_then(|x| x.checked_add(1));
        match (padded, extent) {
            (Some(padded), Some(extent)) if extent > padded => {
                return Err(format!(
                    "the kernel's {axis} spans {extent} (size {kernel}, dilation {dilation}) but the padded input's \
                     is only {padded} ({input} + padding {before} + {after}); the output would be empty"
                ));
            }
            (Some(_), Some(_)) => {}
            _ => return Err(format!("the padded input's or the dilated kernel's {axis} overflows")),
        }
    }
    // The checks above are those of `Conv2dParams::out_height`, bar the output size's
    // own arithmetic; and every buffer's length must be a usize.
    let (oh, ow) = p.out_height().zip(p.out_width()).ok_or("the output size overflows")?;
    let lengths = [
        [p.batch, p.in_height, p.in_width, p.in_channels],
        [p.batch, oh, ow, p.out_channels],
        [p.out_channels, p.kernel_height, p.kernel_width, p.in_channels_per_group()],
    ];
    if lengths.iter().any(|dims| dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_none()) {
        return Err("a tensor's size overflows".into());
    }
    Ok(p)
}

/// The canonical spec of a convolution: options in the order s, p, d, g, each left out
/// where it is the default, and a pair or the four paddings written once where their
/// values are equal. [`parse_conv_spec`] reads it back as `p`.
pub fn conv_spec(p: &Conv2dParams) -> String {
    let pair = |a: usize, b: usize| if a == b { a.to_string() } else { format!("{a}x{b}") };
    let mut spec = format!(
        "{}x{}x{}x{}/{}/{}x{}",
        p.batch, p.in_height, p.in_width, p.in_channels, p.out_channels, p.kernel_height, p.kernel_width
    );
    if (p.stride_height, p.stride_width) != (1, 1) {
        spec += &format!("/s{}", pair(p.stride_height, p.stride_width));
    }
    let pads = [p.pad_top, p.pad_left, p.pad_bottom, p.pad_right];
    if pads.iter().all(|&x| x == pads[0]) {
        if pads[0] != 0 {
            spec += &format!("/p{}", pads[0]);
        }
    } else {
        spec += &format!("/p{}x{}x{}x{}", pads[0], pads[1], pads[2], pads[3]);
    }
    if (p.dilation_height, p.dilation_width) != (1, 1) {
        spec += &format!("/d{}", pair(p.dilation_height, p.dilation_width));
    }
    if p.groups != 1 {
        spec += &format!("/g{}", p.groups);
    }
    spec
}

/// A stride or dilation: one value for both axes or `AxB`, each at least 1.
fn pair(value: &str, what: &str) -> Result<[usize; 2], String> {
    match value.split('x').count() {
        1 => Ok([sizes::<1>(value, what, 1)?[0]; 2]),
        2 => sizes(value, what, 1),
        n => Err(format!("{what}{value} has {n} values; expected one for both axes or AxB (vertical x horizontal)")),
    }
}

/// `N` numbers joined by `x`, each at least `min`.
fn sizes<const N: usize>(text: &str, what: &str, min: usize) -> Result<[usize; N], String> {
    let values: Vec<&str> = text.split('x').collect();
    if values.len() != N {
        let expected = if N == 1 { "one number".to_string() } else { format!("{N} numbers joined by x") };
        return Err(format!("{what} is {text:?}; expected {expected}"));
    }
    let mut out = [0; N];
    for (slot, v) in out.iter_mut().zip(values) {
        // `usize::from_str` takes a leading '+'; a spec has digits only.
        *slot = match v.parse::<usize>() {
            Ok(n) if v.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("{what}: {v:?} is not a number")),
        };
        if *slot < min {
            return Err(format!("{what}: {v} is zero; it must be at least {min}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "1x20x20x16/16/3x3";

    fn base() -> Conv2dParams {
        Conv2dParams::new([1, 20, 20, 16], 16, [3, 3])
    }

    fn with(options: &str) -> Result<Conv2dParams, String> {
        parse_conv_spec(&format!("{BASE}{options}"))
    }

    #[test]
    fn parses_each_option_form() {
        assert_eq!(parse_conv_spec("2x7x9x6/4/1x3"), Ok(Conv2dParams::new([2, 7, 9, 6], 4, [1, 3])));
        assert_eq!(with(""), Ok(base()));
        assert_eq!(with("/s2"), Ok(base().with_stride(2, 2)));
        assert_eq!(with("/s2x3"), Ok(base().with_stride(2, 3)));
        assert_eq!(with("/p1"), Ok(base().with_padding(1, 1, 1, 1)));
        assert_eq!(with("/p1x0x2x3"), Ok(base().with_padding(1, 0, 2, 3)));
        assert_eq!(with("/d2"), Ok(base().with_dilation(2, 2)));
        assert_eq!(with("/d1x2"), Ok(base().with_dilation(1, 2)));
        assert_eq!(with("/g4"), Ok(base().with_groups(4)));
        assert_eq!(with("/g16"), Ok(base().with_groups(16)));
        let all = base().with_stride(2, 1).with_padding(0, 1, 2, 3).with_dilation(3, 2).with_groups(8);
        assert_eq!(with("/s2x1/p0x1x2x3/d3x2/g8"), Ok(all));
        assert_eq!(with("/g8/d3x2/p0x1x2x3/s2x1"), Ok(all), "options in any order");
    }

    #[test]
    fn the_canonical_spec_is_normalized_and_reads_back() {
        let cases = [
            ("", BASE.to_string()),
            ("/s1/p0/d1/g1", BASE.to_string()),
            ("/g4/p1x1x1x1/s2x2", format!("{BASE}/s2/p1/g4")),
            ("/p1x0x1x2/s2x3/d2x1", format!("{BASE}/s2x3/p1x0x1x2/d2x1")),
            ("/p0x0x0x1", format!("{BASE}/p0x0x0x1")),
        ];
        for (options, canonical) in cases {
            let p = with(options).unwrap();
            assert_eq!(conv_spec(&p), canonical, "{options}");
            assert_eq!(parse_conv_spec(&canonical), Ok(p), "{canonical}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("1x20x20x16", "missing the output channels and the kernel size"),
            ("1x20x20x16/16", "missing the kernel size"),
            ("1x20x20/16/3x3", "the input NxHxWxC is \"1x20x20\"; expected 4 numbers joined by x"),
            ("1x20x20x16/16x2/3x3", "the output channels OC is \"16x2\"; expected one number"),
            ("1x20x20x16/16/3", "the kernel KHxKW is \"3\"; expected 2 numbers"),
            ("1x0x20x16/16/3x3", "the input NxHxWxC: 0 is zero; it must be at least 1"),
            ("1x20x20x16/0/3x3", "the output channels OC: 0 is zero"),
            ("1x20x20x16/16/3x0", "the kernel KHxKW: 0 is zero"),
            ("1x20x20x16/16/3xa", "the kernel KHxKW: \"a\" is not a number"),
            ("1x20x20x+16/16/3x3", "\"+16\" is not a number"),
            ("1x20x20x16/16/3x-1", "\"-1\" is not a number"),
            ("1x99999999999999999999999x20x16/16/3x3", "\"99999999999999999999999\" is not a number"),
            ("1x20x20x16/16/3x3/q2", "unknown option \"q2\": expected sS (stride), pP (padding)"),
            ("1x20x20x16/16/3x3/S2", "unknown option \"S2\""),
            ("1x20x20x16/16/3x3//s2", "empty option"),
            ("1x20x20x16/16/3x3/s2/", "empty option"),
            ("1x20x20x16/16/3x3/s2/p1/s1", "option s given twice"),
            ("1x20x20x16/16/3x3/g2/g2", "option g given twice"),
            ("1x20x20x16/16/3x3/s0", "the stride s: 0 is zero; it must be at least 1"),
            ("1x20x20x16/16/3x3/d1x0", "the dilation d: 0 is zero"),
            ("1x20x20x16/16/3x3/s", "the stride s: \"\" is not a number"),
            ("1x20x20x16/16/3x3/s1x2x3", "the stride s1x2x3 has 3 values; expected one for both axes or AxB"),
            ("1x20x20x16/16/3x3/p1x2", "the padding p1x2 has 2 values; expected one for all sides or TxLxBxR"),
            ("1x20x20x16/16/3x3/p1xx1x1", "the padding pTxLxBxR: \"\" is not a number"),
            ("1x20x20x16/16/3x3/g0", "the groups g: 0 is zero"),
            ("1x20x20x16/16/3x3/g2x2", "the groups g is \"2x2\"; expected one number"),
            ("1x20x20x16/16/3x3/g3", "16 input channels do not split into 3 groups"),
            ("1x20x20x16/12/3x3/g8", "12 output channels do not split into 8 groups"),
            (
                "1x2x20x16/16/3x3",
                "the kernel's height spans 3 (size 3, dilation 1) but the padded input's is only 2 (2 + padding 0 + 0)",
            ),
            ("1x2x20x16/16/3x3/p0x5x0x5", "the kernel's height spans 3"),
            ("1x20x3x16/16/3x3/d2/p1x0x1x0", "the kernel's width spans 5 (size 3, dilation 2)"),
            ("1x20x20x16/16/3x3/d18446744073709551615", "the padded input's or the dilated kernel's height overflows"),
            ("100000x100000x100000x100000/1/1x1", "a tensor's size overflows"),
        ];
        for (spec, message) in cases {
            match parse_conv_spec(spec) {
                Ok(p) => panic!("{spec} parsed as {p:?}; expected an error containing {message:?}"),
                Err(e) => assert!(e.contains(message), "{spec}: got {e:?}, expected {message:?} in it"),
            }
        }
        // Just fitting is fine: the kernel spans the padded input exactly.
        for spec in ["1x2x20x16/16/3x3/p0x0x1x0", "1x2x20x16/16/3x3/p1x0x0x0", "1x1x20x16/16/3x3/p1"] {
            assert_eq!(parse_conv_spec(spec).map(|p| p.out_height()), Ok(Some(1)), "{spec}");
        }
    }
}
