#![no_main]
// The harness and what it asserts: consonant_relayer::fuzzing::otlp_split.
libfuzzer_sys::fuzz_target!(|data: &[u8]| consonant_relayer::fuzzing::otlp_split(data));
