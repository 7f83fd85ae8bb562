//! The global allocator both binaries use: mimalloc, entered by its plain `malloc` path
//! whenever the requested alignment allows.
//!
//! Why not `mimalloc::MiMalloc` as is: it sends every allocation through
//! `mi_malloc_aligned`, whose checks cost about 75 instructions per call where `mi_malloc`
//! costs about 20, and sizes over 1 KiB fall into its generic path. A request through
//! the tunnel allocates about 30 times in the agent and 25 in the relay (callgrind,
//! bench/RESULTS.md, eighth round). Every mimalloc block is aligned to at least a word,
//! so layouts asking for no more than that take `mi_malloc`; the rest (tokio's task cells
//! ask for 128) keep the aligned entry points. Freeing is the same call for both.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as ffi;

/// The largest alignment every mimalloc block has: a machine word (`MI_INTPTR_SIZE`).
const WORD: usize = core::mem::size_of::<usize>();

/// mimalloc as the global allocator (`#[global_allocator]` in each binary's `main.rs`).
pub struct Allocator;

// SAFETY: each method forwards to the mimalloc call with the same contract; a layout
// whose alignment is at most a word gets it from every mimalloc block, and larger
// alignments go to the `_aligned` calls, which honour them.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            ffi::mi_malloc(layout.size()).cast()
        } else {
            ffi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            ffi::mi_zalloc(layout.size()).cast()
        } else {
            ffi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        ffi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            ffi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            ffi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path returns memory with the alignment asked for, keeps contents across a
    /// reallocation, and zeroes what `alloc_zeroed` returns.
    #[test]
    fn honours_alignment_contents_and_zeroing() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16, 64, 128, 4096] {
            for size in [1, 7, 8, 24, 100, 1024, 1500, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero size; every pointer is freed with its own layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xAB, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xAB));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());

                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
