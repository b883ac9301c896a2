//! The global allocator: mimalloc with the `mimalloc` feature, the system allocator without.
//! Nothing else in the crate needs to know which one is in use.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
