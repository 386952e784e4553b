//! Packed weights as bytes: saved once (after packing, or with a model), loaded many
//! times, checked in full on the way in.
//!
//! ```text
//!  offset  size  field
//!  0       8     magic "QGEMMWTS"
//!  8       2     format version, u16 LE: 1 for 8-bit weights, 2 for 4-bit ones (this
//!                build writes and reads both)
//!  10      1     what follows: 1 = GEMM weights (PackedWeights),
//!                              2 = conv weights (PackedConvWeights)
//!  11      1     the panels' elements: 0 = i8 (version 1), 1 = uint4 two per byte
//!                (version 2: the 4-bit layout of `PackedB::try_new_nibbles`, int4
//!                saved as uint4 `w + 8` with zero point `zp + 8`)
//!  12      …     the ISA's name and the kernel's name (u8 length, ASCII each),
//!                the tile (mr, nr, kg, ka: u32 LE each),
//!                GEMM: K, N (u64 LE);  conv: OC, KH, KW, C, groups (u64 LE),
//!                the zero points (u64 count = N or OC, then one i8 each),
//!                the panels: GEMM one matrix, conv one per group (u64 length, bytes),
//!                each in the packed layout of `qgemm_kernels::pack` for the tile
//!  end−4   4     CRC-32 (IEEE) of every byte before it, u32 LE
//! ```
//!
//! **Loading trusts nothing but the weights.** The checksum, the magic, the version,
//! every length and every padded byte of the panels are checked (a panel's padding
//! must be zero), the weights are read back out of the panels, and everything derived
//! from them (the per-column offsets, the fast-path conditions, the depthwise and
//! run-by-run packings of a convolution) is computed afresh, exactly as packing
//! computes it. A truncated, corrupted or inconsistent file is an
//! [`ErrorKind::Format`](crate::ErrorKind::Format) error, never a panic or a wrong
//! result.
//!
//! **Across ISAs.** The file records the ISA and kernel it was packed for. `from_bytes`
//! packs for that ISA where this CPU runs it, and otherwise for the
//! [selected ISA](crate::selected_isa): weights saved on an AVX-512 machine load on an
//! AVX2 or AArch64 one, repacked ([`PackedWeights::isa`] says which). `from_bytes_for`
//! packs for the ISA asked, whatever the file says. Either way the results are the
//! same bytes, since every ISA computes the same function.

use qgemm_kernels::kernel::Tile;
use qgemm_kernels::pack::{unpack, unpack_nibbles};
use qgemm_reference::Conv2dParams;

use crate::conv::{ConvWeights, PackedConvWeights};
use crate::error::{Error, ErrorKind, Result, bail};
use crate::gemm::{PackedWeights, Weights};
use crate::isa::{Isa, selected_isa};
use crate::nibbles::{NibbleConvWeights, NibbleFormat, NibbleWeights};

const MAGIC: &[u8; 8] = b"QGEMMWTS";
/// The newest format version this build writes and reads: 2, which adds 4-bit
/// weights. 8-bit weights are still written as version 1, the same bytes as before.
pub const WEIGHTS_FORMAT_VERSION: u16 = 2;
const ELEMENTS_I8: u8 = 0;
const ELEMENTS_UINT4: u8 = 1;
const KIND_GEMM: u8 = 1;
const KIND_CONV: u8 = 2;

impl PackedWeights {
    /// The weights in qgemm's versioned, checksummed byte format (see
    /// [`from_bytes`](Self::from_bytes)).
    pub fn to_bytes(&self) -> Vec<u8> {
        let b = self.packed();
        let mut w = Writer::new(KIND_GEMM, self.isa(), self.kernel_info().name, b.tile(), b.is_nibbles());
        w.u64(b.k());
        w.u64(b.n());
        w.zero_points(b.zero_points());
        w.bytes(b.data());
        w.finish()
    }

    /// Weights saved by [`to_bytes`](Self::to_bytes), packed for the ISA they were
    /// saved for where this CPU runs it, and otherwise repacked for the
    /// [selected ISA](crate::selected_isa).
    ///
    /// ```
    /// # use qgemm::{PackedWeights, Weights};
    /// let w: Vec<i8> = (0..60).map(|i| i as i8 - 30).collect();
    /// let packed = PackedWeights::new(Weights::nxk(&w, 6, 10).with_zero_point(-2))?;
    /// let bytes = packed.to_bytes();
    /// let loaded = PackedWeights::from_bytes(&bytes)?;
    /// assert_eq!((loaded.k(), loaded.n(), loaded.to_bytes()), (10, 6, bytes.clone()));
    /// // One flipped bit is caught.
    /// let mut bad = bytes;
    /// bad[40] ^= 4;
    /// assert_eq!(PackedWeights::from_bytes(&bad).unwrap_err().kind(), qgemm::ErrorKind::Format);
    /// # Ok::<(), qgemm::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Format`](crate::ErrorKind::Format) for bytes that are not such a
    /// file (truncated, corrupted, another version, or conv weights), and every error
    /// of [`PackedWeights::for_isa`].
    pub fn from_bytes(bytes: &[u8]) -> Result<PackedWeights> {
        let file = GemmFile::parse(bytes)?;
        file.pack(file.header.target()?)
    }

    /// Weights saved by [`to_bytes`](Self::to_bytes), packed for `isa`.
    ///
    /// # Errors
    /// As [`from_bytes`](Self::from_bytes), and if `isa` cannot run on this CPU.
    pub fn from_bytes_for(isa: Isa, bytes: &[u8]) -> Result<PackedWeights> {
        let file = GemmFile::parse(bytes)?;
        file.pack(isa)
    }
}

impl PackedConvWeights {
    /// The weights in qgemm's versioned, checksummed byte format (see
    /// [`PackedWeights::from_bytes`]): the filter shape, the zero points and each
    /// group's panels.
    pub fn to_bytes(&self) -> Vec<u8> {
        let groups = self.group_weights();
        let tile = groups[0].tile();
        let mut w = Writer::new(KIND_CONV, self.isa(), self.kernel_info().name, tile, groups[0].is_nibbles());
        let s = self.filter_shape();
        for v in [s.out_channels, s.kernel_height, s.kernel_width, s.in_channels, s.groups] {
            w.u64(v);
        }
        let zero_points: Vec<i32> = groups.iter().flat_map(|b| b.zero_points().iter().copied()).collect();
        w.zero_points(&zero_points);
        for b in groups {
            w.bytes(b.data());
        }
        w.finish()
    }

    /// Conv weights saved by [`to_bytes`](Self::to_bytes), packed for the ISA they
    /// were saved for where this CPU runs it, and otherwise repacked for the
    /// [selected ISA](crate::selected_isa).
    ///
    /// # Errors
    /// As [`PackedWeights::from_bytes`], and every error of
    /// [`PackedConvWeights::for_isa`].
    pub fn from_bytes(bytes: &[u8]) -> Result<PackedConvWeights> {
        let file = ConvFile::parse(bytes)?;
        file.pack(file.header.target()?)
    }

    /// Conv weights saved by [`to_bytes`](Self::to_bytes), packed for `isa`.
    ///
    /// # Errors
    /// As [`from_bytes`](Self::from_bytes), and if `isa` cannot run on this CPU.
    pub fn from_bytes_for(isa: Isa, bytes: &[u8]) -> Result<PackedConvWeights> {
        let file = ConvFile::parse(bytes)?;
        file.pack(isa)
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and PNG compute it).
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut bit = 0;
            while bit < 8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
                bit += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8, isa: Isa, kernel: &str, tile: Tile, nibbles: bool) -> Writer {
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(MAGIC);
        let (version, elements) = if nibbles { (2u16, ELEMENTS_UINT4) } else { (1, ELEMENTS_I8) };
        w.0.extend_from_slice(&version.to_le_bytes());
        w.0.extend_from_slice(&[kind, elements]);
        w.name(isa.name());
        w.name(kernel);
        for v in [tile.mr, tile.nr, tile.kg, tile.ka] {
            w.0.extend_from_slice(&(v as u32).to_le_bytes());
        }
        w
    }

    fn name(&mut self, name: &str) {
        self.0.push(name.len() as u8);
        self.0.extend_from_slice(name.as_bytes());
    }

    fn u64(&mut self, v: usize) {
        self.0.extend_from_slice(&(v as u64).to_le_bytes());
    }

    fn zero_points(&mut self, zero_points: &[i32]) {
        self.u64(zero_points.len());
        self.0.extend(zero_points.iter().map(|&z| z as i8 as u8));
    }

    fn bytes(&mut self, data: &[i8]) {
        self.u64(data.len());
        self.0.extend(data.iter().map(|&v| v as u8));
    }

    fn finish(mut self) -> Vec<u8> {
        let crc = crc32(&self.0);
        self.0.extend_from_slice(&crc.to_le_bytes());
        self.0
    }
}

fn format_error(message: String) -> Error {
    Error::new(ErrorKind::Format, format!("serialized weights: {message}"))
}

/// A bounds-checked reader over the body of a file.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8]> {
        match self.at.checked_add(len).filter(|&end| end <= self.bytes.len()) {
            Some(end) => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(format_error(format!(
                "{what} ({len} bytes at offset {}) runs past the end ({} bytes)",
                self.at,
                self.bytes.len()
            ))),
        }
    }

    fn u32(&mut self, what: &str) -> Result<usize> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u64(&mut self, what: &str) -> Result<usize> {
        let b = self.take(8, what)?;
        let v = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        usize::try_from(v).map_err(|_| format_error(format!("{what} = {v} does not fit this machine's usize")))
    }

    fn name(&mut self, what: &str) -> Result<&'a str> {
        let len = self.take(1, what)?[0] as usize;
        std::str::from_utf8(self.take(len, what)?).map_err(|_| format_error(format!("{what} is not text")))
    }

    fn vector(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.u64(what)?;
        self.take(len, what)
    }
}

/// What every file begins with, checked.
struct Header<'a> {
    isa: &'a str,
    kernel: &'a str,
    tile: Tile,
    /// 4-bit panels.
    nibbles: bool,
}

impl<'a> Header<'a> {
    /// Checks the checksum, magic, version and kind of `bytes`; returns the header
    /// and a reader over the rest of the body.
    fn parse(bytes: &'a [u8], kind: u8) -> Result<(Header<'a>, Reader<'a>)> {
        const FIXED: usize = 12;
        if bytes.len() < FIXED + 4 {
            bail!(Format, "serialized weights: {} bytes is too short to be a qgemm weights file", bytes.len());
        }
        if &bytes[..8] != MAGIC {
            bail!(Format, "serialized weights: no qgemm weights file (its first bytes are not \"QGEMMWTS\")");
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if !(1..=WEIGHTS_FORMAT_VERSION).contains(&version) {
            bail!(
                Format,
                "serialized weights: format version {version}; this build of qgemm reads versions 1 to \
                 {WEIGHTS_FORMAT_VERSION}"
            );
        }
        let (body, stored) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
        let computed = crc32(body);
        if stored != computed {
            bail!(
                Format,
                "serialized weights: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the data \
                 is corrupted or truncated"
            );
        }
        let names = |k: u8| match k {
            KIND_GEMM => "GEMM weights (PackedWeights)",
            KIND_CONV => "conv weights (PackedConvWeights)",
            _ => "an unknown kind",
        };
        if bytes[10] != kind {
            bail!(Format, "serialized weights: the file holds {}, not {}", names(bytes[10]), names(kind));
        }
        let nibbles = match (version, bytes[11]) {
            (1, ELEMENTS_I8) => false,
            (2, ELEMENTS_UINT4) => true,
            (_, elements) => bail!(Format, "serialized weights: element code {elements} in a version {version} file"),
        };
        let mut r = Reader { bytes: body, at: FIXED };
        let isa = r.name("the ISA's name")?;
        let kernel = r.name("the kernel's name")?;
        let (mr, nr, kg, ka) = (r.u32("tile")?, r.u32("tile")?, r.u32("tile")?, r.u32("tile")?);
        if mr == 0 || nr == 0 || kg == 0 || ka == 0 || ka % kg != 0 {
            bail!(Format, "serialized weights: tile {mr}x{nr}, K-groups {kg} and {ka}, is not a valid tile");
        }
        let tile = Tile::new(mr, nr, kg).with_a_group(ka);
        Ok((Header { isa, kernel, tile, nibbles }, r))
    }

    /// The ISA to load for: the saved one where this CPU runs it, else the selected.
    fn target(&self) -> Result<Isa> {
        match self.isa.parse::<Isa>() {
            Ok(isa) if crate::available_isas().contains(&isa) => Ok(isa),
            _ => selected_isa(),
        }
    }
}

fn end_of_body(r: &Reader<'_>) -> Result<()> {
    if r.at != r.bytes.len() {
        bail!(Format, "serialized weights: {} bytes left over after the weights", r.bytes.len() - r.at);
    }
    Ok(())
}

fn zero_points(r: &mut Reader<'_>, channels: usize) -> Result<Vec<i8>> {
    let count = r.u64("the zero point count")?;
    if count != channels {
        bail!(Format, "serialized weights: {count} zero points for {channels} output channels");
    }
    Ok(r.take(count, "the zero points")?.iter().map(|&b| b as i8).collect())
}

/// Unpacks one K×N matrix of panels, or says why it is not one.
fn panels(header: &Header<'_>, data: &[u8], k: usize, n: usize, what: &str) -> Result<Vec<i8>> {
    let data: Vec<i8> = data.iter().map(|&b| b as i8).collect();
    let unpacked =
        if header.nibbles { unpack_nibbles(header.tile, k, n, &data) } else { unpack(header.tile, k, n, &data) };
    unpacked.ok_or_else(|| {
        format_error(format!(
            "{what}: {} bytes are not K = {k} × N = {n} packed for {} (tile {}x{}c{}, K step {}): a wrong length \
             or a non-zero padded value",
            data.len(),
            header.kernel,
            header.tile.mr,
            header.tile.nr,
            header.tile.kg,
            header.tile.k_step()
        ))
    })
}

struct GemmFile<'a> {
    header: Header<'a>,
    k: usize,
    n: usize,
    zero_points: Vec<i8>,
    /// K×N.
    b: Vec<i8>,
}

impl<'a> GemmFile<'a> {
    fn parse(bytes: &'a [u8]) -> Result<GemmFile<'a>> {
        let (header, mut r) = Header::parse(bytes, KIND_GEMM)?;
        let (k, n) = (r.u64("K")?, r.u64("N")?);
        let zero_points = zero_points(&mut r, n)?;
        let data = r.vector("the panels")?;
        end_of_body(&r)?;
        let b = panels(&header, data, k, n, "the panels")?;
        Ok(GemmFile { header, k, n, zero_points, b })
    }

    /// Packs the loaded weights for `isa`, 4-bit ones as 4-bit.
    fn pack(&self, isa: Isa) -> Result<PackedWeights> {
        if self.header.nibbles {
            let bytes = nibble_rows(&self.b, self.k, self.n)?;
            let w = NibbleWeights::uint4_kxn(&bytes, self.k, self.n).with_zero_point(self.zero_points.clone());
            return PackedWeights::for_isa(isa, w);
        }
        PackedWeights::for_isa(isa, Weights::kxn(&self.b, self.k, self.n).with_zero_point(self.zero_points.clone()))
    }
}

struct ConvFile<'a> {
    header: Header<'a>,
    params: Conv2dParams,
    zero_points: Vec<i8>,
    /// Each group's weights as a K×N matrix (K = KH·KW·C/groups, N = OC/groups).
    groups: Vec<Vec<i8>>,
}

impl<'a> ConvFile<'a> {
    fn parse(bytes: &'a [u8]) -> Result<ConvFile<'a>> {
        let (header, mut r) = Header::parse(bytes, KIND_CONV)?;
        let oc = r.u64("out_channels")?;
        let (kh, kw) = (r.u64("kernel_height")?, r.u64("kernel_width")?);
        let (c, groups) = (r.u64("in_channels")?, r.u64("groups")?);
        if groups == 0 || oc % groups != 0 || c % groups != 0 {
            bail!(Format, "serialized weights: groups = {groups} does not divide OC = {oc} and C = {c}");
        }
        let k = kh
            .checked_mul(kw)
            .and_then(|x| x.checked_mul(c / groups))
            .ok_or_else(|| format_error(format!("a {kh}×{kw} kernel over {c} channels overflows")))?;
        let zero_points = zero_points(&mut r, oc)?;
        let mut panel_sets = Vec::new();
        for g in 0..groups {
            let data = r.vector("a group's panels")?;
            panel_sets.push(panels(&header, data, k, oc / groups, &format!("group {g}'s panels"))?);
        }
        end_of_body(&r)?;
        let params = Conv2dParams::new([1, kh, kw, c], oc, [kh, kw]).with_groups(groups);
        Ok(ConvFile { header, params, zero_points, groups: panel_sets })
    }

    /// The weights in OHWI order: each group's K×N matrix transposed into its N
    /// output channels of K values.
    fn ohwi(&self) -> Result<Vec<i8>> {
        let mut ohwi = Vec::new();
        let total: usize = self.groups.iter().map(Vec::len).sum();
        ohwi.try_reserve_exact(total).map_err(|e| crate::error::out_of_memory("conv weights (loaded)", e))?;
        let ocg = self.params.out_channels_per_group();
        for b in &self.groups {
            let k = b.len().checked_div(ocg).unwrap_or(0);
            for n in 0..ocg {
                ohwi.extend((0..k).map(|kk| b[kk * ocg + n]));
            }
        }
        Ok(ohwi)
    }

    /// Packs the loaded weights for `isa`, 4-bit ones as 4-bit.
    fn pack(&self, isa: Isa) -> Result<PackedConvWeights> {
        let ohwi = self.ohwi()?;
        let zero_points = self.zero_points.clone();
        if self.header.nibbles {
            let k = ohwi.len().checked_div(self.params.out_channels).unwrap_or(0);
            let bytes = nibble_rows(&ohwi, self.params.out_channels, k)?;
            let w = NibbleConvWeights::new(&bytes, NibbleFormat::UInt4, &self.params).with_zero_point(zero_points);
            return PackedConvWeights::for_isa(isa, w);
        }
        PackedConvWeights::for_isa(isa, ConvWeights::new(&ohwi, &self.params).with_zero_point(zero_points))
    }
}

/// `rows × cols` values in [0, 15] stored two per byte, each row starting on a byte.
fn nibble_rows(values: &[i8], rows: usize, cols: usize) -> Result<Vec<u8>> {
    let row_bytes = cols.div_ceil(2);
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(rows * row_bytes).map_err(|e| crate::error::out_of_memory("4-bit weights (loaded)", e))?;
    for row in values.chunks_exact(cols.max(1)).take(rows) {
        bytes.extend(row.chunks(2).map(|pair| pair[0] as u8 | pair.get(1).map_or(0, |&hi| (hi as u8) << 4)));
    }
    Ok(bytes)
}
