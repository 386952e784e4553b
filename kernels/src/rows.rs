//! Where the rows of A come from: a matrix in memory, or the taps of a convolution
//! gathered as they are packed (im2col fused into the packing of A).
//!
//! The driver asks for one row's values over one K block at a time
//! ([`Rows::row`]). A matrix row is borrowed as it is. A convolution row is the
//! output pixel's receptive field in `(kh, kw, c)` order; each tap's `C/groups`
//! channels are contiguous in the NHWC input, so a K block is a few contiguous
//! copies into a buffer of at most one K block, and a block that lies inside one
//! tap (every 1×1 convolution, at any stride) is borrowed without a copy. Taps in
//! the padding read as the input zero point, so they contribute exactly zero and
//! the microkernels need no special case. The whole M×K im2col matrix never exists.

/// The shape of a 2-D convolution over NHWC input, as the kernels need it. The
/// public crate validates it before building one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// N.
    pub batch: usize,
    /// H.
    pub in_height: usize,
    /// W.
    pub in_width: usize,
    /// C, all groups.
    pub in_channels: usize,
    /// KH.
    pub kernel_height: usize,
    /// KW.
    pub kernel_width: usize,
    /// Vertical stride.
    pub stride_height: usize,
    /// Horizontal stride.
    pub stride_width: usize,
    /// Vertical dilation.
    pub dilation_height: usize,
    /// Horizontal dilation.
    pub dilation_width: usize,
    /// Rows of padding above.
    pub pad_top: usize,
    /// Columns of padding on the left.
    pub pad_left: usize,
    /// OH.
    pub out_height: usize,
    /// OW.
    pub out_width: usize,
}

impl ConvGeometry {
    /// The input row read by output row `oh` at kernel row `kh`, or `None` in the padding.
    #[inline]
    pub fn input_row(&self, oh: usize, kh: usize) -> Option<usize> {
        (oh * self.stride_height + kh * self.dilation_height)
            .checked_sub(self.pad_top)
            .filter(|&ih| ih < self.in_height)
    }

    /// The input column read by output column `ow` at kernel column `kw`, or `None` in
    /// the padding.
    #[inline]
    pub fn input_col(&self, ow: usize, kw: usize) -> Option<usize> {
        (ow * self.stride_width + kw * self.dilation_width).checked_sub(self.pad_left).filter(|&iw| iw < self.in_width)
    }

    /// Output pixels per image.
    pub fn out_pixels(&self) -> usize {
        self.out_height * self.out_width
    }

    /// `(batch, oh, ow)` of output pixel `pixel`.
    #[inline]
    pub fn pixel(&self, pixel: usize) -> (usize, usize, usize) {
        let ow = pixel % self.out_width;
        let rest = pixel / self.out_width;
        (rest / self.out_height, rest % self.out_height, ow)
    }

    /// Whether some tap of some output pixel falls in the padding.
    pub fn reads_padding(&self) -> bool {
        let last_row = (self.out_height - 1) * self.stride_height + (self.kernel_height - 1) * self.dilation_height;
        let last_col = (self.out_width - 1) * self.stride_width + (self.kernel_width - 1) * self.dilation_width;
        self.pad_top > 0
            || self.pad_left > 0
            || last_row >= self.pad_top + self.in_height
            || last_col >= self.pad_left + self.in_width
    }
}

/// The taps of one group of a convolution, as the rows of A: row `r` is output pixel
/// `first_pixel + r` and holds `KH·KW·group_channels` values.
#[derive(Clone, Copy, Debug)]
pub struct Im2col<'a> {
    /// The whole NHWC input.
    pub input: &'a [u8],
    /// The convolution's shape.
    pub geometry: ConvGeometry,
    /// The group's first input channel.
    pub channel0: usize,
    /// Input channels per group.
    pub group_channels: usize,
    /// The output pixel of row 0.
    pub first_pixel: usize,
    /// What a tap in the padding reads.
    pub zero_point: u8,
    /// No value any row holds exceeds this (the driver's fast-path test).
    pub max_value: u8,
    /// The input holds i8 values' bytes: each value is read with its top bit flipped
    /// (`a + 128` as a u8), so that the kernels see u8 taps; padding reads
    /// `zero_point` as it is (give it flipped too). Taps are then always copied.
    pub flip: bool,
}

/// The rows of A.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    /// A row-major matrix: row `r` is `data[r * stride..][..k]`.
    Matrix {
        /// The values.
        data: &'a [u8],
        /// Distance between rows.
        stride: usize,
    },
    /// A convolution's taps, gathered while packing.
    Im2col(Im2col<'a>),
    /// A row-major matrix of i8 activations, held as their bytes: row `r` is
    /// `data[r * stride..][..k]`, and each value is read with its top bit flipped
    /// (`a ^ 0x80`, that is `a + 128` as a u8), gathered while packing, so that the
    /// kernels see u8 activations (and the zero point `zp + 128`).
    Flipped {
        /// The i8 values' bytes.
        data: &'a [u8],
        /// Distance between rows.
        stride: usize,
    },
}

impl<'a> Rows<'a> {
    /// The same rows from row `r` on.
    pub fn skip(self, r: usize) -> Rows<'a> {
        match self {
            Rows::Matrix { data, stride } => Rows::Matrix { data: data.get(r * stride..).unwrap_or(&[]), stride },
            Rows::Im2col(g) => Rows::Im2col(Im2col { first_pixel: g.first_pixel + r, ..g }),
            Rows::Flipped { data, stride } => Rows::Flipped { data: data.get(r * stride..).unwrap_or(&[]), stride },
        }
    }

    /// Values `k0..k1` of row `r`, borrowed where they are contiguous in memory and
    /// gathered into `buf` (at least `k1 − k0` long) where they are not.
    ///
    /// # Panics
    /// If the row lies outside the source, or `buf` is too short for a gather.
    #[inline]
    pub fn row<'s>(&'s self, r: usize, k0: usize, k1: usize, buf: &'s mut [u8]) -> &'s [u8] {
        match self {
            Rows::Matrix { data, stride } => &data[r * stride + k0..r * stride + k1],
            Rows::Im2col(g) => g.row(r, k0, k1, buf),
            Rows::Flipped { data, stride } => {
                let (src, dst) = (&data[r * stride + k0..r * stride + k1], &mut buf[..k1 - k0]);
                dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s ^ 0x80);
                dst
            }
        }
    }

    /// An upper bound of the values in rows `0..rows`, columns `0..k` (exact for a
    /// matrix; for a convolution, the largest input value or padding value).
    pub fn max_value(&self, rows: usize, k: usize) -> u8 {
        match self {
            Rows::Matrix { data, stride } => {
                (0..rows).map(|r| data[r * stride..r * stride + k].iter().fold(0, |m, &v| m.max(v))).max().unwrap_or(0)
            }
            Rows::Im2col(g) => g.max_value,
            Rows::Flipped { data, stride } => (0..rows)
                .map(|r| data[r * stride..r * stride + k].iter().fold(0, |m, &v| m.max(v ^ 0x80)))
                .max()
                .unwrap_or(0),
        }
    }
}

impl Im2col<'_> {
    /// `src` into `dst`, flipped where the input is i8.
    #[inline]
    fn copy(&self, dst: &mut [u8], src: &[u8]) {
        if self.flip {
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s ^ 0x80);
        } else {
            dst.copy_from_slice(src);
        }
    }

    #[inline]
    fn row<'s>(&'s self, r: usize, k0: usize, k1: usize, buf: &'s mut [u8]) -> &'s [u8] {
        if k1 <= k0 {
            return &[];
        }
        let g = &self.geometry;
        let cg = self.group_channels;
        let (b, oh, ow) = g.pixel(self.first_pixel + r);
        // K runs over kernel rows of KW·cg values. Within one kernel row, the taps of
        // kernel columns whose input columns are all inside the image are contiguous
        // in the input when the horizontal dilation is 1 and the group is all channels
        // (NHWC): then a kernel row is one copy, or a borrow when it is the whole range.
        let kernel_row = g.kernel_width * cg;
        let contiguous = g.dilation_width == 1 && cg == g.in_channels;
        let pixel_at =
            |ih: usize, iw: usize| ((b * g.in_height + ih) * g.in_width + iw) * g.in_channels + self.channel0;
        // Divisions only where K starts and ends; kernel rows in between start at
        // kernel column 0, channel 0, and end at the last column.
        let (mut kh, start) = (k0 / kernel_row, k0 % kernel_row);
        let (mut first_kw, mut c) = (start / cg, start % cg);
        let mut k = k0;
        let mut filled = 0;
        while k < k1 {
            let row_end = (kh + 1) * kernel_row;
            let end = k1.min(row_end);
            let last_kw = if end == row_end { g.kernel_width - 1 } else { (end - 1 - kh * kernel_row) / cg };
            let ih = g.input_row(oh, kh);
            let span_inside = contiguous && g.input_col(ow, first_kw).is_some() && g.input_col(ow, last_kw).is_some();
            match (ih, span_inside) {
                (Some(ih), true) => {
                    let iw = g.input_col(ow, first_kw).expect("inside");
                    let src = &self.input[pixel_at(ih, iw) + c..][..end - k];
                    if k == k0 && end == k1 && !self.flip {
                        return src;
                    }
                    self.copy(&mut buf[filled..filled + src.len()], src);
                }
                (None, _) => buf[filled..filled + end - k].fill(self.zero_point),
                (Some(ih), false) => {
                    if let Some(iw) =
                        g.input_col(ow, first_kw).filter(|_| k == k0 && end == k1 && first_kw == last_kw && !self.flip)
                    {
                        // One tap inside the image (a 1×1, say): borrow it.
                        return &self.input[pixel_at(ih, iw) + c..][..end - k];
                    }
                    let mut at = filled;
                    for kw in first_kw..=last_kw {
                        let c0 = if kw == first_kw { c } else { 0 };
                        let len = (cg - c0).min(end - k - (at - filled));
                        let part = &mut buf[at..at + len];
                        match g.input_col(ow, kw) {
                            Some(iw) => self.copy(part, &self.input[pixel_at(ih, iw) + c0..][..len]),
                            None => part.fill(self.zero_point),
                        }
                        at += len;
                    }
                }
            }
            filled += end - k;
            k = end;
            (kh, first_kw, c) = (kh + 1, 0, 0);
        }
        &buf[..k1 - k0]
    }
}
