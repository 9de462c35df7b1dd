import Glibc

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32
#endif

/// Entry of the libFuzzer harnesses in Fuzz/: hands `body` to libFuzzer in fuzzing builds
/// (-DFUZZING, -sanitize=fuzzer), or runs it once over each file named on the command line
/// (replaying a corpus or a crash) in normal builds.
public func runFuzzer(_ body: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Never {
    #if FUZZING
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, body))
    #else
    for path in CommandLine.arguments.dropFirst() {
        guard let text = readFile(path) else { FileHandleOut.stderr("cannot read \(path)\n"); exit(1) }
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBufferPointer { body($0.baseAddress, $0.count) }
    }
    exit(0)
    #endif
}
