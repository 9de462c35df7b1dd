import Common
import Glibc

// health-checker is not built yet: it follows tcp-proxy and the cluster subsystem in the issue order.
FileHandleOut.stderr("health-checker \(toolkitVersion): not implemented yet (see README.md, Status)\n")
exit(2)
