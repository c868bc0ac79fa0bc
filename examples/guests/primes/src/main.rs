//! The `primes` task as a WASI preview 1 command: stdin is the input, stdout the output, and a
//! malformed input ends with exit code 2 and a message on stderr. The kernel is the library
//! (`spare_example_primes`).

// The helpers of the `spare-guest` crate (sdk/guest), compiled in as a module rather than
// taken as a path dependency: cargo hashes a path dependency outside this workspace by its
// absolute path, which changes function order in the module and so breaks byte-reproducible
// builds across checkout paths. A task in its own repository just depends on `spare-guest`.
#[allow(dead_code)]
#[path = "../../../../sdk/guest/src/lib.rs"]
mod spare_guest;

fn main() {
    spare_guest::run(|input| {
        spare_example_primes::task(input).map_err(spare_guest::TaskError::invalid_input)
    })
}
