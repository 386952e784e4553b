//! The C ABI's saved weights: packed weights to bytes and back, in the versioned,
//! checksummed format of `qgemm::PackedWeights::to_bytes` (the README's "Operators,
//! and weights saved with a model").

use super::{
    Failure, QGEMM_STATUS_BUFFER_LENGTH, QGEMM_STATUS_NULL_POINTER, boundary, deref, fail, qgemm_packed_conv_weights,
    qgemm_packed_weights, qgemm_status, slice, slice_mut,
};
use crate::{PackedConvWeights, PackedWeights};

/// Saves a handle's weights with `to_bytes`: their length to `*len` and, unless `buf`
/// is null, the bytes to `buf` (`capacity` bytes; a smaller capacity is
/// `QGEMM_STATUS_BUFFER_LENGTH`, with `*len` still set).
///
/// # Safety
/// `handle` is null or live; `buf` null or valid for `capacity` bytes; `len` null or
/// writable.
unsafe fn save<T>(
    handle: *const T,
    to_bytes: fn(&T) -> Vec<u8>,
    buf: *mut u8,
    capacity: usize,
    len: *mut usize,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let handle = unsafe { deref(handle, "weights")? };
        // SAFETY: the caller's contract, passed on.
        unsafe { copy_out(&to_bytes(handle), buf, capacity, len) }
    })
}

/// Copies `bytes` to `buf` and their length to `*len` (see [`save`]).
///
/// # Safety
/// `buf` is null or valid for `capacity` bytes; `len` is null or writable.
unsafe fn copy_out(bytes: &[u8], buf: *mut u8, capacity: usize, len: *mut usize) -> Result<(), Failure> {
    if len.is_null() {
        return fail(QGEMM_STATUS_NULL_POINTER, "len is null");
    }
    // SAFETY: `len` is non-null and writable (the caller's contract).
    unsafe { len.write(bytes.len()) };
    if buf.is_null() {
        return Ok(());
    }
    if capacity < bytes.len() {
        return fail(
            QGEMM_STATUS_BUFFER_LENGTH,
            format!("buf holds {capacity} bytes; the weights need {}", bytes.len()),
        );
    }
    // SAFETY: the caller's contract: `buf` holds `capacity` >= `bytes.len()` bytes.
    let out = unsafe { slice_mut(buf, bytes.len(), "buf")? };
    out.copy_from_slice(bytes);
    Ok(())
}

/// Loads a handle with `load` from `len` bytes at `bytes`, written to `*out`.
///
/// # Safety
/// `bytes` is valid for `len` bytes; `out` null or writable.
unsafe fn load<T>(bytes: *const u8, len: usize, out: *mut *mut T, load: fn(&[u8]) -> crate::Result<T>) -> qgemm_status {
    boundary(|| {
        if out.is_null() {
            return fail(QGEMM_STATUS_NULL_POINTER, "out is null");
        }
        // SAFETY: the caller's contract.
        let bytes = unsafe { slice(bytes, len, "bytes")? };
        let handle = load(bytes)?;
        // SAFETY: `out` is non-null and writable (the caller's contract).
        unsafe { out.write(Box::into_raw(Box::new(handle))) };
        Ok(())
    })
}

/// Saves packed weights: writes their size in bytes to `*len` and, unless `buf` is
/// null, the bytes to `buf` (`capacity` bytes; too small is
/// `QGEMM_STATUS_BUFFER_LENGTH`).
///
/// # Safety
/// `weights` is null or a live handle; `buf` null or valid for `capacity` bytes; `len`
/// null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_packed_weights_save(
    weights: *const qgemm_packed_weights,
    buf: *mut u8,
    capacity: usize,
    len: *mut usize,
) -> qgemm_status {
    // SAFETY: the caller's contract, passed on.
    unsafe { save(weights, |w| w.0.to_bytes(), buf, capacity, len) }
}

/// Loads weights saved by [`qgemm_packed_weights_save`] into a new handle, written to
/// `*out`: packed for the saved ISA where this CPU runs it, else repacked for the
/// selected ISA. A truncated, corrupted or inconsistent file is
/// `QGEMM_STATUS_FORMAT`.
///
/// # Safety
/// `bytes` is valid for `len` bytes; `out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_packed_weights_load(
    bytes: *const u8,
    len: usize,
    out: *mut *mut qgemm_packed_weights,
) -> qgemm_status {
    // SAFETY: the caller's contract, passed on.
    unsafe { load(bytes, len, out, |b| PackedWeights::from_bytes(b).map(qgemm_packed_weights)) }
}

/// [`qgemm_packed_weights_save`] for convolution weights.
///
/// # Safety
/// As [`qgemm_packed_weights_save`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_packed_conv_weights_save(
    weights: *const qgemm_packed_conv_weights,
    buf: *mut u8,
    capacity: usize,
    len: *mut usize,
) -> qgemm_status {
    // SAFETY: the caller's contract, passed on.
    unsafe { save(weights, |w| w.0.to_bytes(), buf, capacity, len) }
}

/// [`qgemm_packed_weights_load`] for convolution weights.
///
/// # Safety
/// As [`qgemm_packed_weights_load`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_packed_conv_weights_load(
    bytes: *const u8,
    len: usize,
    out: *mut *mut qgemm_packed_conv_weights,
) -> qgemm_status {
    // SAFETY: the caller's contract, passed on.
    unsafe { load(bytes, len, out, |b| PackedConvWeights::from_bytes(b).map(qgemm_packed_conv_weights)) }
}
