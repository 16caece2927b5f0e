// fleetdl/core/config.hpp — compile-time configuration of fleetdl.
//
// Every knob is a FLEETDL_* macro with a default set here under #ifndef, so a
// user overrides it on the compiler command line (-DFLEETDL_X=...) and never
// edits a header. All knobs are listed in docs/configuration.md.
#pragma once

// Exceptions are detected, never assumed. Without them every fallible API
// still works through Result<T>; only the throwing convenience wrappers vanish.
#ifndef FLEETDL_EXCEPTIONS
#  if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#    define FLEETDL_EXCEPTIONS 1
#  else
#    define FLEETDL_EXCEPTIONS 0
#  endif
#endif

// Threads: set to 0 for targets without std::thread (bare metal). Work then
// runs on the calling thread whatever thread count is asked for.
#ifndef FLEETDL_THREADS
#  define FLEETDL_THREADS 1
#endif

// Upper bound on the number of worker threads a ThreadPool accepts.
#ifndef FLEETDL_MAX_THREADS
#  define FLEETDL_MAX_THREADS 256
#endif

// Limits applied to untrusted input before any allocation.
// Largest model file accepted by io::read_model (bytes).
#ifndef FLEETDL_MAX_MODEL_BYTES
#  define FLEETDL_MAX_MODEL_BYTES (std::uint64_t{1} << 31)
#endif
// Largest number of nodes (layers, composites) in a model file.
#ifndef FLEETDL_MAX_NODES
#  define FLEETDL_MAX_NODES 4096
#endif
// Deepest composite nesting accepted in a model file.
#ifndef FLEETDL_MAX_DEPTH
#  define FLEETDL_MAX_DEPTH 16
#endif
// Largest single tensor dimension (channels, height, width, units).
#ifndef FLEETDL_MAX_DIM
#  define FLEETDL_MAX_DIM (1 << 20)
#endif
// Largest decompressed IDX file accepted by data::read_idx (bytes).
#ifndef FLEETDL_MAX_IDX_BYTES
#  define FLEETDL_MAX_IDX_BYTES (std::uint64_t{1} << 32)
#endif
