#![no_main]
// The harness and what it asserts: consonant_relayer::fuzzing::connect_response.
libfuzzer_sys::fuzz_target!(|data: &[u8]| consonant_relayer::fuzzing::connect_response(data));
