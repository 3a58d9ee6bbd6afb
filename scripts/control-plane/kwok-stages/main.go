// Command kwok-stages prints kwok's default Node and Pod stages as one
// multi-document YAML stream, for `kwok --config`.
//
// kwok v0.8.0 has no built-in stages and exits with "no stages found" when
// none are given; once any Pod stage is given it adds no default Pod stage
// either. The defaults ship as Go strings in sigs.k8s.io/kwok/kustomize/stage,
// so printing them keeps them in step with the kwok version instead of
// keeping a copy.
package main

import (
	"fmt"
	"os"
	"strings"

	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	nodeheartbeat "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
)

func main() {
	stages := []string{
		nodefast.DefaultNodeInit,           // node-initialize
		nodeheartbeat.DefaultNodeHeartbeat, // node-heartbeat
		podfast.DefaultPodReady,            // pod-ready
		podfast.DefaultPodComplete,         // pod-complete
		podfast.DefaultPodDelete,           // pod-delete
	}
	docs := make([]string, len(stages))
	for i, s := range stages {
		docs[i] = strings.TrimRight(s, "\n") + "\n"
	}
	if _, err := os.Stdout.WriteString(strings.Join(docs, "---\n")); err != nil {
		fmt.Fprintln(os.Stderr, "kwok-stages:", err)
		os.Exit(1)
	}
}
