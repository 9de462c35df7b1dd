import Common
import Glibc

// http-proxy is not built yet: it follows tcp-proxy and the cluster subsystem in the issue order.
FileHandleOut.stderr("http-proxy \(toolkitVersion): not implemented yet (see README.md, Status)\n")
exit(2)
