module github.com/cloudtaser/cloudtaser/scripts/images/pause

go 1.26.0
