//! Integration tests: the built `libnvidia_ml_fake.so`, loaded through the real nvml-wrapper
//! (and nvml-wrapper-sys for MIG), as Allot's node daemon loads it with `--nvml-lib`.

mod harness;
mod raw;

/// A [`harness::Scenario`] for the test function `$test` of the calling module.
macro_rules! scenario {
    ($test:ident, $machine:expr) => {
        $crate::harness::Scenario::new($crate::harness::test_path(module_path!(), stringify!($test)), $machine)
    };
}

mod devices;
mod events;
mod malformed;
mod mig;

/// What a scenario body returns: nvml-wrapper errors propagate with `?`.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;
