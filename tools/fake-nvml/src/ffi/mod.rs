//! The exported NVML C functions, and the helpers that keep them from crashing.
//!
//! Every export goes through [`nvml_export!`], which wraps its body in [`guard`]: a panic
//! becomes `NVML_ERROR_UNKNOWN` instead of unwinding into C. Out-parameters are written with
//! [`write`] and [`write_str`], which refuse null pointers; handles are looked up in the
//! runtime's table and never dereferenced.

use std::ffi::{CStr, c_char, c_uint};
use std::panic::{AssertUnwindSafe, catch_unwind};

use nvml_wrapper_sys::bindings::nvmlReturn_t;

mod device;
mod events;
mod mig;
mod system;

/// An NVML return code.
pub(crate) type Code = nvmlReturn_t;

/// The result of an NVML call: `Err` holds the code to return.
pub(crate) type NvmlResult<T> = Result<T, Code>;

/// The NVML return codes the fake uses, under short names.
pub(crate) mod codes {
    use super::Code;
    use nvml_wrapper_sys::bindings as sys;

    pub(crate) const SUCCESS: Code = sys::nvmlReturn_enum_NVML_SUCCESS;
    pub(crate) const UNINITIALIZED: Code = sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
    pub(crate) const INVALID_ARGUMENT: Code = sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
    pub(crate) const NOT_SUPPORTED: Code = sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
    pub(crate) const NOT_FOUND: Code = sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
    pub(crate) const INSUFFICIENT_SIZE: Code = sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
    pub(crate) const TIMEOUT: Code = sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT;
    pub(crate) const IN_USE: Code = sys::nvmlReturn_enum_NVML_ERROR_IN_USE;
    pub(crate) const INSUFFICIENT_RESOURCES: Code = sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES;
    pub(crate) const ARGUMENT_VERSION_MISMATCH: Code = sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    pub(crate) const GPU_IS_LOST: Code = sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST;
    pub(crate) const UNKNOWN: Code = sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN;
}

/// Runs the body of an exported function: its error becomes the return code, and a panic
/// becomes `NVML_ERROR_UNKNOWN` rather than unwinding across the C boundary.
pub(crate) fn guard(body: impl FnOnce() -> NvmlResult<()>) -> Code {
    // The body only touches the runtime through its mutex, whose poisoning is handled, so
    // observing state after a caught panic is fine.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => codes::SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => codes::UNKNOWN,
    }
}

/// Defines an exported NVML function whose body returns [`NvmlResult<()>`], wrapped in
/// [`guard`], with the safety contract every NVML entry point shares.
macro_rules! nvml_export {
    ($(#[doc = $doc:expr])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[doc = $doc])*
        ///
        /// # Safety
        ///
        /// Each pointer argument must be null or valid for the reads and writes NVML
        /// documents for this function. Handles may hold any value: they are looked up,
        /// never dereferenced.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> nvml_wrapper_sys::bindings::nvmlReturn_t {
            $crate::ffi::guard(move || -> $crate::ffi::NvmlResult<()> { $body })
        }
    };
}
pub(crate) use nvml_export;

/// Fails with `NVML_ERROR_INVALID_ARGUMENT` when an out-parameter is null; used before a
/// call changes anything, so that a bad pointer leaves no half-done change behind.
pub(crate) fn check_out<T>(pointer: *mut T) -> NvmlResult<()> {
    if pointer.is_null() { Err(codes::INVALID_ARGUMENT) } else { Ok(()) }
}

/// Writes `value` to an out-parameter.
///
/// # Safety
///
/// `pointer` must be null or valid for writing one `T`.
pub(crate) unsafe fn write<T>(pointer: *mut T, value: T) -> NvmlResult<()> {
    check_out(pointer)?;
    // SAFETY: `pointer` is not null (checked above) and the caller promises it is valid for
    // writing a `T`; the unaligned write does not even need it to be aligned.
    unsafe { pointer.write_unaligned(value) };
    Ok(())
}

/// Reads an in-parameter.
///
/// # Safety
///
/// `pointer` must be null or valid for reading one `T`.
pub(crate) unsafe fn read<T: Copy>(pointer: *const T) -> NvmlResult<T> {
    if pointer.is_null() {
        return Err(codes::INVALID_ARGUMENT);
    }
    // SAFETY: `pointer` is not null (checked above) and the caller promises it is valid for
    // reading a `T`, which is `Copy`, so the read leaves the original intact.
    Ok(unsafe { pointer.read_unaligned() })
}

/// Copies `text` and a terminating NUL into a caller's buffer of `length` bytes, or fails
/// with `NVML_ERROR_INSUFFICIENT_SIZE` when it does not fit, as NVML does.
///
/// # Safety
///
/// `buffer` must be null or valid for writing `length` bytes.
pub(crate) unsafe fn write_str(buffer: *mut c_char, length: c_uint, text: &str) -> NvmlResult<()> {
    check_out(buffer)?;
    let bytes = text.as_bytes();
    if bytes.len() >= length as usize {
        return Err(codes::INSUFFICIENT_SIZE);
    }
    // SAFETY: `buffer` is not null and valid for `length` bytes (caller's promise), and
    // `bytes.len() + 1 <= length` (checked above), so the copy and the NUL stay inside it;
    // `text` is our own memory, so the two cannot overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), bytes.len());
        buffer.add(bytes.len()).write(0);
    }
    Ok(())
}

/// Reads a NUL-terminated string argument; a null pointer or invalid UTF-8 is an invalid
/// argument.
///
/// # Safety
///
/// `text` must be null or point to a NUL-terminated string.
pub(crate) unsafe fn read_str(text: *const c_char) -> NvmlResult<String> {
    if text.is_null() {
        return Err(codes::INVALID_ARGUMENT);
    }
    // SAFETY: not null (checked above) and NUL-terminated by the caller's promise.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str().map(str::to_owned).map_err(|_| codes::INVALID_ARGUMENT)
}

/// Fills a fixed-size C string field of an NVML struct, truncating if need be.
pub(crate) fn fill_c_array(field: &mut [c_char], text: &str) {
    field.fill(0);
    let room = field.len().saturating_sub(1);
    for (slot, &byte) in field.iter_mut().zip(text.as_bytes().iter().take(room)) {
        *slot = byte as c_char;
    }
}

/// `NVML_STRUCT_VERSION(name, version)` for a struct of type `T`.
pub(crate) const fn struct_version<T>(version: u32) -> u32 {
    std::mem::size_of::<T>() as u32 | (version << 24)
}

/// `nvmlErrorString`: NVML's description of a return code, as a static C string.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    use nvml_wrapper_sys::bindings as sys;
    let text: &'static CStr = match result {
        sys::nvmlReturn_enum_NVML_SUCCESS => c"Success",
        sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED => c"Uninitialized",
        sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => c"Not Supported",
        sys::nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => c"Insufficient Permissions",
        sys::nvmlReturn_enum_NVML_ERROR_ALREADY_INITIALIZED => c"Already Initialized",
        sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND => c"Not Found",
        sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_POWER => c"Insufficient External Power",
        sys::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT => c"Timeout",
        sys::nvmlReturn_enum_NVML_ERROR_IRQ_ISSUE => c"Interrupt Request Issue",
        sys::nvmlReturn_enum_NVML_ERROR_LIBRARY_NOT_FOUND => c"NVML Shared Library Not Found",
        sys::nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND => c"Function Not Found",
        sys::nvmlReturn_enum_NVML_ERROR_CORRUPTED_INFOROM => c"Corrupted infoROM",
        sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => c"GPU is lost",
        sys::nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED => c"GPU requires restart",
        sys::nvmlReturn_enum_NVML_ERROR_OPERATING_SYSTEM => c"The operating system has blocked the request",
        sys::nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH => c"RM has detected an NVML/RM version mismatch",
        sys::nvmlReturn_enum_NVML_ERROR_IN_USE => c"In use by another client",
        sys::nvmlReturn_enum_NVML_ERROR_MEMORY => c"Insufficient Memory",
        sys::nvmlReturn_enum_NVML_ERROR_NO_DATA => c"No data",
        sys::nvmlReturn_enum_NVML_ERROR_VGPU_ECC_NOT_SUPPORTED => c"ECC is not supported on this vGPU",
        sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES => c"Insufficient resources",
        sys::nvmlReturn_enum_NVML_ERROR_FREQ_NOT_SUPPORTED => c"Frequency not supported",
        sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH => c"Argument version mismatch",
        sys::nvmlReturn_enum_NVML_ERROR_DEPRECATED => c"Deprecated",
        sys::nvmlReturn_enum_NVML_ERROR_NOT_READY => c"Not ready",
        sys::nvmlReturn_enum_NVML_ERROR_GPU_NOT_FOUND => c"GPU not found",
        sys::nvmlReturn_enum_NVML_ERROR_INVALID_STATE => c"Invalid state",
        _ => c"Unknown Error",
    };
    text.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_must_fit_with_their_nul() {
        let mut buffer = [1 as c_char; 4];
        // SAFETY: `buffer` is a live local array of 4 bytes.
        let fits = unsafe { write_str(buffer.as_mut_ptr(), 4, "abc") };
        assert_eq!(fits, Ok(()));
        assert_eq!(buffer, [97, 98, 99, 0]);
        // SAFETY: as above.
        let too_long = unsafe { write_str(buffer.as_mut_ptr(), 4, "abcd") };
        assert_eq!(too_long, Err(codes::INSUFFICIENT_SIZE));
        // SAFETY: a null buffer is allowed and refused.
        let null = unsafe { write_str(std::ptr::null_mut(), 4, "a") };
        assert_eq!(null, Err(codes::INVALID_ARGUMENT));
    }

    #[test]
    fn panics_become_unknown() {
        assert_eq!(guard(|| panic!("boom")), codes::UNKNOWN);
        assert_eq!(guard(|| Err(codes::NOT_FOUND)), codes::NOT_FOUND);
    }
}
