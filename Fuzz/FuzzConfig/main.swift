// libFuzzer harness for the config loader and the endpoints-file reader (JSON one-pass reader
// and YAML): any bytes give a config (endpoints) or a ConfigError naming a path, never a
// crash. Built by scripts/fuzz.sh; a normal build replays files.
import Common

struct FuzzBlock: ListenerFilterConfig {
    let name: String
    let path: String
    var clusterReferences: [(path: String, name: String)] { [(path, name)] }
    var dump: JSON { .string(name) }
}

let fuzzParser = FilterBlockParser(binary: "fuzz", key: "tcp") { (m: ConfigMap, _: String) throws(ConfigError) -> any ListenerFilterConfig in
    let c = try m.required("cluster")
    return FuzzBlock(name: try c.string(), path: c.path)
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do {
        let cfg = try ConfigLoader.load(yaml: text, parser: fuzzParser)
        precondition(!cfg.listeners.isEmpty, "a loaded config has listeners")
    } catch {
        precondition(!error.description.isEmpty)
    }
    // The same bytes as an endpoints file (what health-checker writes and file discovery reads).
    do {
        let eps = try EndpointsFile.parse(bytes: Array(UnsafeBufferPointer(start: data, count: size)))
        precondition(Set(eps.map(\.address)).count == eps.count, "endpoints are unique")
        precondition(eps.allSatisfy { $0.address.port != 0 && (1...128).contains($0.weight) }, "endpoints are valid")
    } catch {
        precondition(!error.description.isEmpty)
    }
    return 0
}

#if FUZZING
/// libFuzzer's driver references this symbol by name.
@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 { fuzzOne(data, size) }
#endif

runFuzzer(fuzzOne)
