module github.com/cloudtaser/cloudtaser/wrapper

go 1.26.0

require (
	github.com/cloudtaser/cloudtaser/sdk/go v0.0.0
	golang.org/x/sys v0.50.0
)

// The SDK's manifest package is the one reader and writer of the fd manifest.
replace github.com/cloudtaser/cloudtaser/sdk/go => ../sdk/go
