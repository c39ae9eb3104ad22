package kubelet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Provisioner is the name of the stand-in for the PMEM CSI driver.
const Provisioner = "pmem-e2e.local/hostpath"

// Storage stands in for the PMEM CSI driver: a StorageClass of the given name with
// WaitForFirstConsumer binding (PMEM is node-local), and a small external provisioner that
// gives every claim of that class a hostPath PV of exactly its size on this node, and deletes
// the PV and its directory once the claim is gone (the generated <pod>-pmem PVCs go with
// their pods). The directories live under the node's Dir, on the ordinary disk: what the
// features check is the wiring (the heap is a file mapping under /mnt/pmem), not DAX.
type Storage struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	errs   []string
}

// StartStorage creates the StorageClass and starts the provisioner loop.
func (n *Node) StartStorage(ctx context.Context, cfg *rest.Config, className string) (*Storage, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	wffc := storagev1.VolumeBindingWaitForFirstConsumer
	del := corev1.PersistentVolumeReclaimDelete
	sc := &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: className},
		Provisioner:       Provisioner,
		ReclaimPolicy:     &del,
		VolumeBindingMode: &wffc,
	}
	if _, err := cs.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create StorageClass %s: %w", className, err)
	}
	root := filepath.Join(n.Dir, "pmem-volumes")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s := &Storage{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			if err := s.reconcile(runCtx, cs, className, root); err != nil && runCtx.Err() == nil {
				s.record(err)
			}
			select {
			case <-runCtx.Done():
				return
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()
	return s, nil
}

// Stop ends the provisioner loop.
func (s *Storage) Stop() {
	if s == nil {
		return
	}
	s.cancel()
	<-s.done
}

// Errors returns the distinct errors the loop met (for a failing test's log).
func (s *Storage) Errors() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.errs...)
}

func (s *Storage) record(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := err.Error()
	for _, e := range s.errs {
		if e == msg {
			return
		}
	}
	if len(s.errs) < 20 {
		s.errs = append(s.errs, msg)
	}
}

const (
	annSelectedNode  = "volume.kubernetes.io/selected-node"
	annProvisionedBy = "pv.kubernetes.io/provisioned-by"
)

func (s *Storage) reconcile(ctx context.Context, cs kubernetes.Interface, className, root string) error {
	pvcs, err := cs.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != className ||
			pvc.Spec.VolumeName != "" || pvc.DeletionTimestamp != nil || pvc.Annotations[annSelectedNode] == "" {
			continue
		}
		if err := provision(ctx, cs, pvc, className, root); err != nil {
			return err
		}
	}
	pvs, err := cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if pv.Annotations[annProvisionedBy] != Provisioner || pv.Status.Phase != corev1.VolumeReleased {
			continue
		}
		if pv.Spec.HostPath != nil && strings.HasPrefix(pv.Spec.HostPath.Path, root+"/") {
			if err := os.RemoveAll(pv.Spec.HostPath.Path); err != nil {
				return fmt.Errorf("remove %s: %w", pv.Spec.HostPath.Path, err)
			}
		}
		if err := cs.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete released PV %s: %w", pv.Name, err)
		}
	}
	return nil
}

func provision(ctx context.Context, cs kubernetes.Interface, pvc *corev1.PersistentVolumeClaim, className, root string) error {
	name := "pmem-" + string(pvc.UID)
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	// World-writable like an emptyDir: the app runs as any uid (Redis as 999).
	if err := os.Chmod(dir, 0o777); err != nil {
		return err
	}
	hpType := corev1.HostPathDirectory
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{annProvisionedBy: Provisioner},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: pvc.Spec.Resources.Requests[corev1.ResourceStorage]},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              className,
			VolumeMode:                    pvc.Spec.VolumeMode,
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hpType},
			},
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID,
			},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{pvc.Annotations[annSelectedNode]},
				}}}},
			}},
		},
	}
	if _, err := cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("provision PV for %s/%s: %w", pvc.Namespace, pvc.Name, err)
	}
	return nil
}
