#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringway::fuzzing::jsonrpc_strict(data));
