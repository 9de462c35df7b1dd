import Common
import Glibc

// udp-proxy is not built yet: it follows tcp-proxy and the cluster subsystem in the issue order.
FileHandleOut.stderr("udp-proxy \(toolkitVersion): not implemented yet (see README.md, Status)\n")
exit(2)
