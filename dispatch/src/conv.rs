//! 2-D convolution over NHWC input.
//!
//! **As GEMMs.** Output pixels are GEMM rows (`M = N·OH·OW`), a group's output
//! channels are its columns, and its taps `(kh, kw, c)` are K, in the order of OHWI
//! weights, so each group's weights are an N×K matrix packed once like any other
//! (OIHW weights are reordered at packing time). The taps are gathered while the loop
//! nest packs A, one K block of one row at a time ([`qgemm_kernels::rows`]): the
//! M×K im2col matrix never exists. A 1×1 convolution reads its input rows in place,
//! at any stride; a dense one (stride 1, no padding) is a plain GEMM over the input.
//! Padded taps read as the input zero point, so they add exactly zero and the
//! kernels need no special case. Groups are separate GEMMs over their own packed
//! weights and their slice of the channels; nothing is copied per call.
//!
//! **Indirect.** Where the kernel can read A in place (the VNNI tiers, and AVX2 where
//! its fast path is exact), the same GEMMs read the input through offsets, one per
//! output pixel and kernel row (or tap), and nothing is gathered or packed at all
//! ([`qgemm_kernels::indirect`]).
//!
//! **Depthwise** (groups = C, any channel multiplier) runs its own kernels
//! ([`qgemm_kernels::dwconv`]), vectorized across channels.
//!
//! **Scratch** is per thread and bounded by
//! [`SCRATCH_BYTES_PER_THREAD`](crate::SCRATCH_BYTES_PER_THREAD) whatever the shape;
//! [`conv2d_in`] keeps it in a caller-owned [`Workspace`].

use qgemm_kernels::Kernel;
use qgemm_kernels::driver::{self, GemmArgs, Scratch, ScratchNeeds};
use qgemm_kernels::dwconv::{self, DwArgs, DwKernel, PackedDw};
use qgemm_kernels::indirect::{self, IndirectGemm, Plan};
use qgemm_kernels::output::{OutData, OutputStage as LoweredStage};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::{ConvGeometry, Im2col, Rows};
use qgemm_reference::{Channelwise, Conv2dParams, OutputStage};

use crate::error::{Result, bail, out_of_memory};
use crate::gemm::{Options, OutputMatrix, WeightElement, i8_bytes};
use crate::isa::{Isa, KernelInfo, dw_kernel_for, kernel_for_weights, selected_isa};
use crate::nibbles::{ConvSource, IntoConvWeights, Lowered};
use crate::parallel::{Grid, Partition, Shape, Tile, run_tasks};
use crate::validate::{Dequant, check_weight_zero_points, dequant, output_stage, product};
use crate::workspace::Workspace;

/// The order of a convolution's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FilterLayout {
    /// `[out_channels][kernel_height][kernel_width][in_channels / groups]` (TFLite,
    /// and the order qgemm packs from directly).
    #[default]
    Ohwi,
    /// `[out_channels][in_channels / groups][kernel_height][kernel_width]` (PyTorch
    /// and ONNX); reordered once, at packing time.
    Oihw,
}

/// Convolution weights as the caller holds them, dense, in OHWI order unless
/// [`with_layout`](ConvWeights::with_layout) says otherwise, with the filter shape of
/// the convolution they belong to (its output and input channels, kernel size and
/// groups; the other fields of [`Conv2dParams`] do not matter for packing).
///
/// ```
/// # use qgemm::{Conv2dParams, ConvWeights, FilterLayout};
/// let params = Conv2dParams::new([1, 8, 8, 4], 2, [3, 3]);
/// let w = vec![1i8; 2 * 3 * 3 * 4]; // OIHW [2, 4, 3, 3], as PyTorch holds it
/// let weights = ConvWeights::new(&w, &params).with_layout(FilterLayout::Oihw).with_zero_point(0);
/// # let _ = weights;
/// ```
#[derive(Clone, Debug)]
pub struct ConvWeights<'a, W: WeightElement = i8> {
    data: &'a [W],
    layout: FilterLayout,
    shape: FilterShape,
    zero_point: Channelwise<W>,
}

impl<'a, W: WeightElement> ConvWeights<'a, W> {
    /// The weights (`i8`, or `u8` with a `u8` zero point) of the convolution
    /// `params`: `OC·KH·KW·C/groups` values in OHWI order, zero point 0.
    pub fn new(data: &'a [W], params: &Conv2dParams) -> ConvWeights<'a, W> {
        ConvWeights {
            data,
            layout: FilterLayout::Ohwi,
            shape: FilterShape::of(params),
            zero_point: Channelwise::PerTensor(W::ZERO),
        }
    }

    /// The same weights in another order.
    pub fn with_layout(self, layout: FilterLayout) -> ConvWeights<'a, W> {
        ConvWeights { layout, ..self }
    }

    /// The same weights with a zero point of their type per tensor or per output
    /// channel (a `Vec`, OC values).
    pub fn with_zero_point(self, zero_point: impl Into<Channelwise<W>>) -> ConvWeights<'a, W> {
        ConvWeights { zero_point: zero_point.into(), ..self }
    }

    pub(crate) fn parts(self) -> (&'a [W], FilterLayout, FilterShape, Channelwise<W>) {
        (self.data, self.layout, self.shape, self.zero_point)
    }
}

/// The shape fields of conv weights, as the packing saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FilterShape {
    pub(crate) out_channels: usize,
    pub(crate) kernel_height: usize,
    pub(crate) kernel_width: usize,
    pub(crate) in_channels: usize,
    pub(crate) groups: usize,
}

impl FilterShape {
    pub(crate) fn of(p: &Conv2dParams) -> FilterShape {
        FilterShape {
            out_channels: p.out_channels,
            kernel_height: p.kernel_height,
            kernel_width: p.kernel_width,
            in_channels: p.in_channels,
            groups: p.groups,
        }
    }
}

/// Convolution weights packed once for one ISA: one packed N×K matrix per group,
/// and for a depthwise convolution also the depthwise kernels' packing.
#[derive(Clone, Debug)]
pub struct PackedConvWeights {
    isa: Isa,
    kernel: &'static Kernel,
    dw_kernel: &'static DwKernel,
    shape: FilterShape,
    groups: Vec<PackedB>,
    /// The weights packed run by run for an indirect convolution over kernel rows,
    /// where a kernel row (`KW·C` values) is not a whole number of K-groups (one
    /// group only); empty otherwise, where `groups` serves.
    runs: Option<PackedB>,
    /// Present when groups = in_channels (and the kernel is not absurdly tall); the
    /// GEMMs above stay for shapes whose pair rows would not fit the scratch bound.
    depthwise: Option<PackedDw>,
}

impl PackedConvWeights {
    /// Packs `weights` for the [selected ISA](crate::selected_isa).
    ///
    /// # Errors
    /// If a size is zero where it must not be, the channel counts are not multiples of
    /// `groups`, the length is not `OC·KH·KW·C/groups`, a product overflows, the
    /// per-channel zero points are not OC, or `QGEMM_ISA` is invalid.
    pub fn new<'a>(weights: impl IntoConvWeights<'a>) -> Result<PackedConvWeights> {
        PackedConvWeights::for_isa(selected_isa()?, weights)
    }

    /// Packs `weights` for `isa`.
    ///
    /// # Errors
    /// As [`new`](Self::new), and if `isa` cannot run on this CPU.
    pub fn for_isa<'a>(isa: Isa, weights: impl IntoConvWeights<'a>) -> Result<PackedConvWeights> {
        let ConvSource { source, layout, shape } = weights.into_source();
        let nibbles = source.is_nibbles();
        check_groups(shape.groups, shape.in_channels, shape.out_channels)?;
        let dw_kernel = dw_kernel_for(isa)?;
        if shape.kernel_height == 0 || shape.kernel_width == 0 {
            bail!(Dimension, "kernel size {}×{} has a zero side", shape.kernel_height, shape.kernel_width);
        }
        let cg = shape.in_channels / shape.groups;
        let ocg = shape.out_channels / shape.groups;
        let k = product("conv weights KH·KW·C/groups", &[shape.kernel_height, shape.kernel_width, cg])?;
        product("conv weights OC·KH·KW·C/groups", &[shape.out_channels, k])?;
        let kernel = kernel_for_weights(isa, k, ocg, Some(cg))?;
        let what = || {
            let dims = match layout {
                FilterLayout::Ohwi => {
                    format!("OHWI [{}, {}, {}, {cg}]", shape.out_channels, shape.kernel_height, shape.kernel_width)
                }
                FilterLayout::Oihw => {
                    format!("OIHW [{}, {cg}, {}, {}]", shape.out_channels, shape.kernel_height, shape.kernel_width)
                }
            };
            format!("conv weights {dims}")
        };
        let Lowered { values, zero_point } = source.values(shape.out_channels, k, &what)?;
        let (data, zero_point) = (&*values, &zero_point);
        check_weight_zero_points(zero_point, shape.out_channels)?;
        let tile = kernel.tile();
        let step = if nibbles { PackedB::nibble_k_step(tile) } else { tile.k_step() };
        if k.checked_next_multiple_of(step).is_none() || ocg.checked_next_multiple_of(tile.nr).is_none() {
            bail!(Overflow, "conv weights: K = {k} or OC/groups = {ocg} overflows when padded to the tile");
        }
        let zps = zero_point.values();
        let reordered;
        let ohwi = match layout {
            FilterLayout::Ohwi => data,
            FilterLayout::Oihw => {
                reordered = oihw_to_ohwi(data, shape.kernel_height * shape.kernel_width, cg)
                    .map_err(|e| out_of_memory("conv weights (OIHW reordered)", e))?;
                &reordered[..]
            }
        };
        let groups = (0..shape.groups)
            .map(|g| {
                let data = &ohwi[g * ocg * k..(g + 1) * ocg * k];
                let zp = if zps.len() == 1 { zps } else { &zps[g * ocg..(g + 1) * ocg] };
                let pack = if nibbles { PackedB::try_new_nibbles } else { PackedB::try_new };
                pack(tile, data, BLayout::NxK, k, ocg, zp)
                    .map_err(|e| out_of_memory(&format!("conv weights group {g}"), e))
            })
            .collect::<Result<_>>()?;
        // 4-bit weights stay 4-bit: the depthwise kernels and the indirect path read
        // 8-bit ones, so they run on the GEMMs that decode them a block at a time.
        let depthwise = if cg == 1 && shape.kernel_height <= dwconv::DW_MAX_KERNEL_HEIGHT && !nibbles {
            let zps: Vec<i32> = zps.iter().map(|&z| i32::from(z)).collect();
            let packed = PackedDw::try_new(ohwi, shape.out_channels, shape.kernel_height, shape.kernel_width, &zps)
                .map_err(|e| out_of_memory("depthwise conv weights", e))?;
            Some(packed)
        } else {
            None
        };
        let indirect = (kernel.has_indirect() || kernel.fast_path().is_some_and(|f| f.has_indirect())) && !nibbles;
        let (runs, run_len) = indirect::kernel_row_runs(shape.kernel_height, shape.kernel_width, shape.in_channels);
        let runs = if indirect && shape.groups == 1 && !run_len.is_multiple_of(4) {
            let packed = PackedB::try_new_runs(tile, ohwi, runs, run_len, shape.out_channels, zps)
                .map_err(|e| out_of_memory("conv weights (kernel rows)", e))?;
            Some(packed)
        } else {
            None
        };
        Ok(PackedConvWeights { isa, kernel, dw_kernel, shape, groups, runs, depthwise })
    }

    /// The ISA the weights were packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The microkernel of the GEMM paths: the ISA's, or a sibling with a tile that
    /// fits the output channels per group better (see [`Isa::kernel_info`]), or for
    /// convolutions too shallow for AMX's tiles (KH·KW·C/groups < 128, or fewer than 16
    /// channels per group), AVX-512 VNNI's.
    pub fn kernel_info(&self) -> KernelInfo {
        KernelInfo::of(self.kernel, self.isa).expect("packed for an available ISA")
    }

    /// Which way [`conv2d_in`] computes a convolution with these weights and `params`.
    ///
    /// # Errors
    /// As [`conv2d_in`] for invalid `params` or weights packed for another shape.
    /// On AVX2, whose indirect kernel is its fast path, the choice between
    /// [`ConvPath::Indirect`] and [`ConvPath::Im2col`] may depend on the input as well
    /// (activations ≤ 127 allow it for any weights): this is the choice for an input
    /// of any values, and [`Conv2dTasks::path`] the one a call makes.
    ///
    /// # Errors
    /// As [`conv2d_in`] for invalid `params` or weights packed for another shape.
    pub fn path(&self, params: &Conv2dParams) -> Result<ConvPath> {
        let (oh, ow) = check_params(params)?;
        self.check_shape(params)?;
        Ok(self.path_for(params, &geometry(params, oh, ow), u8::MAX, false).0)
    }

    /// How the convolution runs indirectly, if it does, for activations at most
    /// `max_value`.
    fn indirect_plan(&self, p: &Conv2dParams, geometry: &ConvGeometry, max_value: u8) -> Option<Plan> {
        let plan = indirect::plan(geometry, p.in_channels_per_group(), self.kernel)?;
        (0..p.groups)
            .all(|g| self.indirect_weights(&plan, g).is_some_and(|b| indirect::runs_on(self.kernel, b, max_value)))
            .then_some(plan)
    }

    /// The weights of group `g` for an indirect `plan`.
    fn indirect_weights(&self, plan: &Plan, g: usize) -> Option<&PackedB> {
        if plan.needs_run_weights() { self.runs.as_ref() } else { self.groups.get(g) }
    }

    /// The path for activations at most `max_value`, with its indirect plan where it is
    /// [`ConvPath::Indirect`]; i8 input (`signed`) takes the GEMMs that gather or flip
    /// their rows while packing (pointwise or im2col).
    fn path_for(
        &self,
        p: &Conv2dParams,
        geometry: &ConvGeometry,
        max_value: u8,
        signed: bool,
    ) -> (ConvPath, Option<Plan>) {
        let dense_pointwise = p.kernel_height == 1
            && p.kernel_width == 1
            && p.stride_height == 1
            && p.stride_width == 1
            && p.pad_top + p.pad_left + p.pad_bottom + p.pad_right == 0;
        if !signed && self.depthwise.is_some() && dwconv::plan(geometry, p.out_channels).is_some() {
            (ConvPath::Depthwise, None)
        } else if let Some(plan) = self.indirect_plan(p, geometry, max_value).filter(|_| !signed) {
            (ConvPath::Indirect, Some(plan))
        } else if dense_pointwise {
            (ConvPath::Pointwise, None)
        } else {
            (ConvPath::Im2col, None)
        }
    }

    fn check_shape(&self, p: &Conv2dParams) -> Result<()> {
        let wanted = FilterShape::of(p);
        if self.shape != wanted {
            // Name each parameter that differs, as the caller spells it.
            let (had, want) = (self.shape, wanted);
            let differ: Vec<String> = [
                ("out_channels", had.out_channels, want.out_channels),
                ("kernel_height", had.kernel_height, want.kernel_height),
                ("kernel_width", had.kernel_width, want.kernel_width),
                ("in_channels", had.in_channels, want.in_channels),
                ("groups", had.groups, want.groups),
            ]
            .into_iter()
            .filter(|(_, a, b)| a != b)
            .map(|(name, a, b)| format!("{name} = {b} (the weights have {a})"))
            .collect();
            bail!(WeightsMismatch, "conv params do not match the packed weights: {}", differ.join(", "));
        }
        Ok(())
    }

    /// The filter shape the weights were packed with.
    pub(crate) fn filter_shape(&self) -> FilterShape {
        self.shape
    }

    /// OC, the output channels.
    pub fn out_channels(&self) -> usize {
        self.shape.out_channels
    }

    /// `[KH, KW]`, the kernel's size.
    pub fn kernel_size(&self) -> [usize; 2] {
        [self.shape.kernel_height, self.shape.kernel_width]
    }

    /// C, the input channels of the convolution (all groups).
    pub fn in_channels(&self) -> usize {
        self.shape.in_channels
    }

    /// The channel groups.
    pub fn groups(&self) -> usize {
        self.shape.groups
    }

    /// Each group's packed N×K matrix.
    pub(crate) fn group_weights(&self) -> &[PackedB] {
        &self.groups
    }

    /// Bytes of packed data held.
    pub fn heap_size(&self) -> usize {
        self.groups.iter().map(PackedB::heap_size).sum::<usize>()
            + self.runs.as_ref().map_or(0, PackedB::heap_size)
            + self.depthwise.as_ref().map_or(0, PackedDw::heap_size)
    }
}

/// How a convolution is computed (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConvPath {
    /// A dense 1×1 convolution (stride 1, no padding) where [`ConvPath::Indirect`] does
    /// not run: one GEMM per group over the input as it is.
    Pointwise,
    /// One GEMM per group, its taps gathered while packing (1×1 at other strides or
    /// with padding reads its rows in place, without copies).
    Im2col,
    /// The depthwise kernels.
    Depthwise,
    /// One GEMM per group whose kernel reads the input in place through offsets, one
    /// per output pixel and kernel row (or tap): no gathering, no packing of A
    /// ([`qgemm_kernels::indirect`]).
    Indirect,
}

pub(crate) fn geometry(p: &Conv2dParams, oh: usize, ow: usize) -> ConvGeometry {
    ConvGeometry {
        batch: p.batch,
        in_height: p.in_height,
        in_width: p.in_width,
        in_channels: p.in_channels,
        kernel_height: p.kernel_height,
        kernel_width: p.kernel_width,
        stride_height: p.stride_height,
        stride_width: p.stride_width,
        dilation_height: p.dilation_height,
        dilation_width: p.dilation_width,
        pad_top: p.pad_top,
        pad_left: p.pad_left,
        out_height: oh,
        out_width: ow,
    }
}

/// OIHW weights in OHWI order: each output channel's `C/groups × taps` block
/// transposed to `taps × C/groups`.
fn oihw_to_ohwi(
    data: &[i8],
    taps: usize,
    cg: usize,
) -> std::result::Result<Vec<i8>, std::collections::TryReserveError> {
    let mut out = Vec::new();
    out.try_reserve_exact(data.len())?;
    for filter in data.chunks_exact((taps * cg).max(1)) {
        for t in 0..taps {
            out.extend((0..cg).map(|c| filter[c * taps + t]));
        }
    }
    Ok(out)
}

fn check_groups(groups: usize, in_channels: usize, out_channels: usize) -> Result<()> {
    if groups == 0 {
        bail!(Dimension, "groups = 0; at least one group is needed");
    }
    for (name, channels) in [("in_channels", in_channels), ("out_channels", out_channels)] {
        if !channels.is_multiple_of(groups) {
            bail!(
                Dimension,
                "groups = {groups} does not divide {name} = {channels}; both channel counts must be multiples of groups"
            );
        }
    }
    Ok(())
}

/// The input of a convolution: NHWC, dense, u8 ([`ConvInput::new`]) or i8
/// ([`ConvInput::i8`]), with its zero point.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ConvInput<'a> {
    /// `[batch, in_height, in_width, in_channels]`: the values, or for i8 input their
    /// bytes.
    pub data: &'a [u8],
    /// The input zero point (for i8 input, its byte); padded taps read as this value.
    pub zero_point: u8,
    /// Whether `data` and `zero_point` hold i8 values: computed as the u8 values
    /// `a + 128` with zero point `zp + 128`, which changes no result. i8 input runs
    /// the im2col or pointwise GEMMs (the depthwise kernels and the indirect path read
    /// u8 in place).
    pub signed: bool,
}

impl<'a> ConvInput<'a> {
    /// NHWC u8 `data` with zero point `zero_point`.
    pub fn new(data: &'a [u8], zero_point: u8) -> ConvInput<'a> {
        ConvInput { data, zero_point, signed: false }
    }

    /// NHWC i8 `data` with zero point `zero_point`.
    pub fn i8(data: &'a [i8], zero_point: i8) -> ConvInput<'a> {
        ConvInput { data: i8_bytes(data), zero_point: zero_point as u8, signed: true }
    }

    /// The zero point of the u8 values the kernels read.
    fn kernel_zero_point(&self) -> u8 {
        if self.signed { self.zero_point ^ 0x80 } else { self.zero_point }
    }
}

/// Checks a convolution's shape and returns `(out_height, out_width)`.
pub(crate) fn check_params(p: &Conv2dParams) -> Result<(usize, usize)> {
    check_groups(p.groups, p.in_channels, p.out_channels)?;
    for (name, v) in [
        ("kernel_height", p.kernel_height),
        ("kernel_width", p.kernel_width),
        ("stride_height", p.stride_height),
        ("stride_width", p.stride_width),
        ("dilation_height", p.dilation_height),
        ("dilation_width", p.dilation_width),
    ] {
        if v == 0 {
            bail!(Dimension, "conv {name} = 0; it must be at least 1");
        }
    }
    let dims = [
        ("height", p.in_height, p.pad_top, p.pad_bottom, p.kernel_height, p.dilation_height),
        ("width", p.in_width, p.pad_left, p.pad_right, p.kernel_width, p.dilation_width),
    ];
    for (name, input, before, after, kernel, dilation) in dims {
        let padded = input.checked_add(before).and_then(|x| x.checked_add(after));
        let extent = (kernel - 1).checked_mul(dilation).and_then(|x| x.checked_add(1));
        match (padded, extent) {
            (Some(padded), Some(extent)) if extent > padded => bail!(
                ConvOutputSize,
                "conv {name}: the kernel spans {extent} (size {kernel}, dilation {dilation}) but the padded input \
                 is only {padded} ({input} + padding {before} + {after}); the output would be empty"
            ),
            (Some(_), Some(_)) => {}
            _ => bail!(Overflow, "conv {name}: padded input or dilated kernel overflows usize"),
        }
    }
    let oh = p.out_height().expect("checked above");
    let ow = p.out_width().expect("checked above");
    Ok((oh, ow))
}

/// A convolution, single-threaded. See [`conv2d_with`].
pub fn conv2d(
    input: &ConvInput<'_>,
    weights: &PackedConvWeights,
    params: &Conv2dParams,
    stage: &OutputStage,
    output: OutputMatrix<'_>,
) -> Result<()> {
    conv2d_with(input, weights, params, stage, output, &Options::default())
}

/// A convolution: NHWC `input`, packed OHWI `weights`, the output stage per output
/// channel, into `output` viewed as a `(N·OH·OW) × OC` matrix (its row stride may
/// exceed OC, to write into a wider channel-concatenated tensor).
///
/// Everything is checked before anything is written: on error the output is untouched.
///
/// # Errors
/// Invalid shapes (zero kernel size, stride, dilation or groups; channels not a
/// multiple of groups; a kernel that does not fit the padded input), an input length
/// other than `N·H·W·C`, weights packed for another shape or ISA, an output that is
/// not `(N·OH·OW) × OC`, every error of the output stage and options, and scratch
/// that could not be allocated ([`ErrorKind::OutOfMemory`](crate::ErrorKind::OutOfMemory)).
pub fn conv2d_with(
    input: &ConvInput<'_>,
    weights: &PackedConvWeights,
    params: &Conv2dParams,
    stage: &OutputStage,
    output: OutputMatrix<'_>,
    options: &Options,
) -> Result<()> {
    conv2d_in(input, weights, params, stage, output, options, &mut Workspace::new())
}

/// [`conv2d_with`] in a caller-owned [`Workspace`], so that repeated calls allocate
/// nothing once it has grown (at most
/// [`SCRATCH_BYTES_PER_THREAD`](crate::SCRATCH_BYTES_PER_THREAD) per thread, whatever
/// the shape).
///
/// # Errors
/// As [`conv2d_with`].
pub fn conv2d_in(
    input: &ConvInput<'_>,
    weights: &PackedConvWeights,
    params: &Conv2dParams,
    stage: &OutputStage,
    output: OutputMatrix<'_>,
    options: &Options,
    workspace: &mut Workspace,
) -> Result<()> {
    options.check(weights.isa)?;
    let partition = Partition::auto(options.threads);
    let tasks = Conv2dTasks::new(input, weights, params, stage, output, &partition)?;
    run_tasks(tasks.len(), options.run_threads(), workspace, &tasks.scratch_needs(), &|i, scratch| {
        tasks.run_in(i, scratch)
    })
}

/// One convolution, checked and cut into tasks by a [`Partition`] over its output
/// pixels (`N·OH·OW` rows) and output channels (columns), for an engine that runs the
/// tasks on its own threads. As [`GemmTasks`](crate::GemmTasks): run each task
/// `0..len()` once, on any thread, each thread with its own [`Workspace`]; the result
/// is byte-identical to [`conv2d`]'s whatever the partition.
///
/// [`Partition::Auto`] cuts whole output rows of the image for the depthwise path (so
/// that each task reuses its input rows), and the channels at group boundaries for a
/// grouped convolution; a [`Partition::Grid`] may cut anywhere. Each task's scratch is
/// bounded by [`SCRATCH_BYTES_PER_THREAD`](crate::SCRATCH_BYTES_PER_THREAD).
#[derive(Debug)]
pub struct Conv2dTasks<'a> {
    input: ConvInput<'a>,
    weights: &'a PackedConvWeights,
    params: Conv2dParams,
    geometry: ConvGeometry,
    path: ConvPath,
    /// How [`ConvPath::Indirect`] runs.
    indirect: Option<Plan>,
    /// The largest value a gathered tap can take (for the fast path's test), or 255
    /// where no group's weights need it.
    max_value: u8,
    stage: LoweredStage<'a>,
    out: OutData<'a>,
    grid: Grid<'a>,
    /// For f32 output: applied to each tile after the kernels.
    dequant: Option<Dequant<'a>>,
}

impl<'a> Conv2dTasks<'a> {
    /// Checks every argument, as [`conv2d_with`] does, and cuts the call by
    /// `partition`. Nothing is written yet.
    ///
    /// # Errors
    /// As [`conv2d_with`] (except the ISA and thread options); a [`Partition::Grid`]
    /// whose bounds do not run from 0 to `N·OH·OW` and OC, or decrease; a
    /// [`Partition::Auto`] with zero threads.
    pub fn new(
        input: &ConvInput<'a>,
        weights: &'a PackedConvWeights,
        params: &Conv2dParams,
        stage: &'a OutputStage,
        output: OutputMatrix<'a>,
        partition: &'a Partition,
    ) -> Result<Conv2dTasks<'a>> {
        let p = *params;
        let (oh, ow) = check_params(&p)?;
        weights.check_shape(&p)?;
        let input_len = product("conv input N·H·W·C", &[p.batch, p.in_height, p.in_width, p.in_channels])?;
        if input.data.len() != input_len {
            bail!(
                BufferLength,
                "conv input: {} values for NHWC [{}, {}, {}, {}] (needs {input_len})",
                input.data.len(),
                p.batch,
                p.in_height,
                p.in_width,
                p.in_channels
            );
        }
        let m = product("conv output N·OH·OW", &[p.batch, oh, ow])?;
        if output.rows != m || output.cols != p.out_channels {
            bail!(
                Dimension,
                "conv output is {}×{} but N·OH·OW × OC = {m}×{} (OH = {oh}, OW = {ow})",
                output.rows,
                output.cols,
                p.out_channels
            );
        }
        output.check()?;
        let dequant = dequant(stage, p.out_channels, output.output_type())?;
        let stage = output_stage(stage, p.out_channels, output.output_type())?;
        let geometry = geometry(&p, oh, ow);
        let kernel = weights.kernel;
        // The fast path's test on gathered or in-place rows: no tap can exceed the
        // input's largest value, or the zero point where a tap reads padding. Only
        // computed when a group's weights do not already allow the fast path for any
        // input.
        let depends = |b: &PackedB| kernel.fast_path_depends_on_activations(b);
        let needs_max = weights.groups.iter().chain(&weights.runs).any(depends);
        let max_value = if needs_max {
            let flip = if input.signed { 0x80 } else { 0 };
            let max = input.data.iter().map(|&v| v ^ flip).max().unwrap_or(0);
            if geometry.reads_padding() { max.max(input.kernel_zero_point()) } else { max }
        } else {
            u8::MAX
        };
        let (path, indirect) = weights.path_for(&p, &geometry, max_value, input.signed);
        let (tile, blocking) = (kernel.tile(), kernel.blocking());
        let taps = p.kernel_height * p.kernel_width;
        let shape = match path {
            // Whole output rows (each task builds its input rows' pairs once), channels
            // in blocks of the depthwise kernels' chunks, and a multiple of the
            // kernel's vector (so that no task's block starts inside a pair of chunks).
            ConvPath::Depthwise => Shape {
                m,
                n: p.out_channels,
                k: taps,
                row_unit: ow,
                col_unit: (4 * dwconv::LANES).next_multiple_of(2 * weights.dw_kernel.lanes()),
                row_block: usize::MAX,
            },
            // Channels at group boundaries where there are groups.
            _ => Shape {
                m,
                n: p.out_channels,
                k: taps * p.in_channels_per_group(),
                row_unit: tile.mr,
                col_unit: if p.groups == 1 { tile.nr } else { p.out_channels_per_group() },
                row_block: blocking.mc,
            },
        };
        let grid = Grid::new(partition, shape)?;
        let out = output.into_out_data();
        Ok(Conv2dTasks {
            input: *input,
            weights,
            params: p,
            geometry,
            path,
            indirect,
            max_value,
            stage,
            out,
            grid,
            dequant,
        })
    }

    /// The number of tasks.
    pub fn len(&self) -> usize {
        self.grid.len()
    }

    /// True when there are no tasks (never: a partition has at least one).
    pub fn is_empty(&self) -> bool {
        self.grid.len() == 0
    }

    /// Task `index`'s tile: output pixels (rows) by output channels (columns).
    pub fn tile(&self, index: usize) -> Option<Tile> {
        self.grid.tile(index)
    }

    /// The path the convolution takes.
    pub fn path(&self) -> ConvPath {
        self.path
    }

    /// Runs task `index` on the calling thread, in `workspace` (one per thread).
    ///
    /// # Errors
    /// An index past the last task, or a task that already ran ([`ErrorKind::Task`]);
    /// scratch that could not be allocated ([`ErrorKind::OutOfMemory`]: the task has
    /// not run then, and may be run again). Nothing is written then.
    ///
    /// [`ErrorKind::Task`]: crate::ErrorKind::Task
    /// [`ErrorKind::OutOfMemory`]: crate::ErrorKind::OutOfMemory
    pub fn run(&self, index: usize, workspace: &mut Workspace) -> Result<()> {
        let needs = self.grid.tile(index).map_or_else(ScratchNeeds::default, |tile| self.needs(&tile));
        workspace.reserve(1, &needs)?;
        let tile = self.grid.start(index)?;
        let held = workspace.heap_size();
        self.compute(tile, &mut workspace.sets(1)[0]);
        debug_assert_eq!(workspace.heap_size(), held, "scratch grew past what was reserved for {needs:?}");
        Ok(())
    }

    /// The scratch that every task fits in.
    fn scratch_needs(&self) -> ScratchNeeds {
        let tiles = (0..self.len()).filter_map(|i| self.grid.tile(i));
        tiles.fold(ScratchNeeds::default(), |most, tile| most.max(self.needs(&tile)))
    }

    /// The scratch [`compute`](Self::compute) grows to for `tile`: the most of its
    /// groups' calls, as `compute` makes them.
    fn needs(&self, tile: &Tile) -> ScratchNeeds {
        let Tile { rows, cols } = tile;
        let (p, w) = (&self.params, self.weights);
        if let (ConvPath::Depthwise, Some(dw)) = (self.path, w.depthwise.as_ref()) {
            return dwconv::needs(w.dw_kernel, &self.geometry, dw, rows.len(), cols.clone(), &self.stage, &self.out);
        }
        let ocg = p.out_channels_per_group();
        let mut most = ScratchNeeds::default();
        for g in cols.start / ocg..cols.end.div_ceil(ocg) {
            let columns = cols.start.max(g * ocg) - g * ocg..cols.end.min((g + 1) * ocg) - g * ocg;
            let needs = match self.indirect {
                Some(plan) => indirect::gemm_needs(w.kernel, rows.len(), &plan, columns),
                None => {
                    let matrix = self.path == ConvPath::Pointwise && !self.input.signed;
                    driver::gemm_needs(w.kernel, rows.len(), matrix, &w.groups[g], columns)
                }
            };
            most = most.max(needs);
        }
        most
    }

    /// Runs task `index` if it has not run.
    fn run_in(&self, index: usize, scratch: &mut Scratch) {
        if let Ok(tile) = self.grid.start(index) {
            self.compute(tile, scratch);
        }
    }

    /// Computes `tile`, which [`Grid::start`] handed out (so to this call alone).
    fn compute(&self, tile: Tile, scratch: &mut Scratch) {
        if tile.rows.is_empty() || tile.cols.is_empty() {
            return;
        }
        // Round to nearest, whatever this thread's caller set (see `fpenv`).
        let _fp = qgemm_kernels::fpenv::DefaultFp::enter();
        self.compute_stored(&tile, scratch);
        if let Some(d) = &self.dequant {
            let Tile { rows, cols } = tile;
            // SAFETY: as in `compute_stored`, whose window is gone.
            let out = unsafe { self.out.window_shared(rows.start, cols.start, rows.len(), cols.len()) };
            d.apply(out.into_i32(), cols.start);
        }
    }

    /// The kernels' part of [`compute`](Self::compute): the tile's output as they store
    /// it (i32 accumulators for f32 output).
    fn compute_stored(&self, tile: &Tile, scratch: &mut Scratch) {
        let Tile { rows, cols } = tile.clone();
        // SAFETY: `Grid::start` hands out each task's tile once, and the tiles of a
        // grid share no element, so nothing else reaches this window while it lives.
        let mut out = unsafe { self.out.window_shared(rows.start, cols.start, rows.len(), cols.len()) };
        let (p, input, w) = (&self.params, &self.input, self.weights);
        if let (ConvPath::Depthwise, Some(dw)) = (self.path, w.depthwise.as_ref()) {
            let args = DwArgs {
                input: input.data,
                geometry: self.geometry,
                zero_point: input.zero_point,
                weights: dw,
                first_pixel: rows.start,
                pixels: rows.len(),
                stage: self.stage,
                channels: cols,
                out,
            };
            dwconv::run(w.dw_kernel, args, scratch);
            return;
        }
        let (cg, ocg) = (p.in_channels_per_group(), p.out_channels_per_group());
        // The groups whose output channels meet `cols`, each on its part of them.
        for g in cols.start / ocg..cols.end.div_ceil(ocg) {
            let (first, end) = (cols.start.max(g * ocg), cols.end.min((g + 1) * ocg));
            // The group's taps: read in place (indirect), or gathered while packing.
            let taps = Im2col {
                input: input.data,
                geometry: self.geometry,
                channel0: g * cg,
                group_channels: cg,
                first_pixel: rows.start,
                zero_point: input.kernel_zero_point(),
                max_value: self.max_value,
                flip: input.signed,
            };
            let (stage, columns) = (self.stage.from_column(g * ocg), first - g * ocg..end - g * ocg);
            let out = out.window(0, first - cols.start, rows.len(), end - first);
            if let Some(plan) = self.indirect {
                let b = w.indirect_weights(&plan, g).expect("planned with these weights");
                let args = IndirectGemm { m: rows.len(), conv: taps, plan, b, stage, columns, out };
                indirect::gemm_in(w.kernel, args, scratch);
                continue;
            }
            let a = if self.path == ConvPath::Pointwise {
                // The input rows are the GEMM rows: A starts at this tile's first pixel
                // and this group's first channel, with stride C.
                let data = input.data.get(rows.start * p.in_channels + g * cg..).unwrap_or(&[]);
                if input.signed {
                    Rows::Flipped { data, stride: p.in_channels }
                } else {
                    Rows::Matrix { data, stride: p.in_channels }
                }
            } else {
                Rows::Im2col(taps)
            };
            let a_zp = input.kernel_zero_point();
            let args = GemmArgs { m: rows.len(), a, a_zp, b: &w.groups[g], stage, columns, out };
            driver::gemm_in(w.kernel, args, scratch);
        }
    }
}
