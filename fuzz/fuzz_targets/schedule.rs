//! The schedule syntax of `policy create --schedule` from arbitrary text: never panics; what
//! parses prints as a schedule that parses to the same value, with a valid name.
#![no_main]

use blocksnap_manifest::{Schedule, validate_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = Schedule::parse(text) {
        let again = Schedule::parse(&s.to_string()).expect("a printed schedule parses");
        assert_eq!(s, again);
        validate_name("policy", "schedule name", &s.name).expect("the name is valid");
    }
});
