//! Process-wide allocator settings.
//!
//! mimalloc commits whole arena chunks eagerly by default on Linux. On Horizon's workload (many
//! small long-lived allocations per socket, interleaved with short-lived handshake buffers) that
//! about doubled the resident memory per idle socket: measured with `benches/idle_connections.rs`,
//! 2.1-2.4 KiB RSS per socket with eager commit against ~1.2 KiB without, for the same 1.1 KiB of
//! live heap. The first arena is created by the first allocation, before `main` runs, so the
//! setting cannot be changed at run time; it is compiled in instead (`.cargo/config.toml` sets
//! `MI_DEFAULT_ARENA_EAGER_COMMIT=0` for mimalloc's build). The environment variable
//! `MIMALLOC_ARENA_EAGER_COMMIT` still overrides it.

/// `mi_option_arena_eager_commit` in mimalloc v3's `mi_option_e` (the crate names no constant for
/// it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// mimalloc's arena eager-commit setting in this process (0: on demand).
pub fn arena_eager_commit() -> std::ffi::c_long {
    // SAFETY: mi_option_get only reads an option value.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mimalloc_is_built_to_commit_arenas_on_demand() {
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_some() {
            return; // explicitly overridden by whoever runs the tests
        }
        assert_eq!(
            super::arena_eager_commit(),
            0,
            "mimalloc was built without .cargo/config.toml's MI_DEFAULT_ARENA_EAGER_COMMIT=0"
        );
    }
}
